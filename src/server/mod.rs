//! The daemon's HTTP side: `POST /webhook` on the public listener; metrics, health and status
//! on the operator's (see [`ops`]).
//!
//! A delivery is checked before anything is parsed: `X-Hub-Signature-256` must be the
//! HMAC-SHA256 of the raw body under the webhook secret (compared in constant time), or the
//! answer is 401. A delivery id seen before is answered and ignored. Work is never done in the
//! request: a push to the watched branch only asks the worker for a pass, and asks made while
//! one is pending collapse into it, so the answer comes at once whatever the load.

use crate::commit::CommitId;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::{mpsc, Notify};

use crate::engine::PullJob;

/// Delivery ids remembered for de-duplication.
const REMEMBERED_DELIVERIES: usize = 10_000;

/// Asks for passes; asks made while one is pending count once.
#[derive(Default)]
pub struct Trigger {
    notify: Notify,
    asked: AtomicU64,
}

impl Trigger {
    /// Ask for a pass.
    pub fn ask(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Wait until a pass is asked for.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// How many times a pass was asked for.
    pub fn asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }
}

pub mod ops;

/// What the daemon did so far (read by the operator's endpoints).
#[derive(Default)]
pub struct Health {
    /// Passes finished.
    pub passes: AtomicU64,
    /// Passes that ended in an error.
    pub failed: AtomicU64,
    /// Deliveries accepted (signature valid, not seen before).
    pub deliveries: AtomicU64,
    /// The branch the last pass ran from (the webhook filter follows it).
    pub branch: Mutex<String>,
    /// The last pass's error, if it failed.
    pub last_error: Mutex<Option<String>>,
    /// The tip the runner's last pass left the branch at, when every commit between the tip
    /// that pass planned from and it is the runner's own: polling finding the branch there
    /// has nothing new to ask a pass for.
    pub own_tip: Mutex<Option<CommitId>>,
    /// When the remote last answered (a pass, or polling's look at the branch).
    pub remote_answered: Mutex<Option<std::time::Instant>>,
}

impl Health {
    /// The remote answered just now.
    pub fn heard_remote(&self) {
        if let Ok(mut at) = self.remote_answered.lock() {
            *at = Some(std::time::Instant::now());
        }
    }
}

/// Everything the handlers share.
pub struct Server {
    /// The webhook secret; without one every delivery is refused.
    pub secret: Option<Vec<u8>>,
    /// This runner's name (its own pushes carry `Codex-Runner: <name>`).
    pub runner: String,
    /// Where passes are asked for.
    pub trigger: Arc<Trigger>,
    /// Counters.
    pub health: Arc<Health>,
    /// Where pull requests to validate go (none: pull_request events are ignored).
    pub pulls: Option<mpsc::UnboundedSender<PullJob>>,
    /// Where deliveries are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Server {
    /// A server for `runner` with the given secret.
    pub fn new(
        secret: Option<Vec<u8>>,
        runner: String,
        trigger: Arc<Trigger>,
        health: Arc<Health>,
    ) -> Self {
        Server {
            secret,
            runner,
            trigger,
            health,
            pulls: None,
            metrics: crate::metrics::global(),
            seen: Mutex::default(),
        }
    }

    /// Whether `id` is new (and remember it).
    fn first_time(&self, id: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0.contains(id) {
            return false;
        }
        seen.0.insert(id.to_string());
        seen.1.push_back(id.to_string());
        if seen.1.len() > REMEMBERED_DELIVERIES {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        true
    }
}

/// The webhook listener's routes: `/webhook` alone, since it faces the forge, and `/healthz`
/// (alive, nothing more) when `healthz` says a load balancer there needs a probe.
pub fn router(server: Arc<Server>, healthz: bool) -> Router {
    let routes = Router::new().route("/webhook", post(webhook));
    let routes = if healthz {
        routes.route("/healthz", axum::routing::get(|| async { "ok\n" }))
    } else {
        routes
    };
    routes.with_state(server)
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn webhook(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let (outcome, status, said) = answer(&s, &headers, &body);
    s.metrics.delivery(outcome);
    (status, said)
}

/// What a delivery gets: how it counts in the metrics, the status and the body.
fn answer(
    s: &Server,
    headers: &HeaderMap,
    body: &Bytes,
) -> (&'static str, StatusCode, &'static str) {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let Some(secret) = &s.secret else {
        return (
            "no_secret",
            StatusCode::UNAUTHORIZED,
            "no webhook secret is configured\n",
        );
    };
    if !verify(secret, body, header("x-hub-signature-256")) {
        tracing::warn!(
            delivery = header("x-github-delivery"),
            "refused a webhook with a bad signature"
        );
        return ("bad_signature", StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    let delivery = header("x-github-delivery");
    if !delivery.is_empty() && !s.first_time(delivery) {
        return ("duplicate", StatusCode::OK, "duplicate delivery ignored\n");
    }
    s.health.deliveries.fetch_add(1, Ordering::Relaxed);
    let branch = s
        .health
        .branch
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    match parse_delivery(header("x-github-event"), body, &branch, &s.runner) {
        Delivery::Ping => ("ping", StatusCode::OK, "pong\n"),
        Delivery::Pass => {
            tracing::info!(delivery, "push to {branch}: pass queued");
            s.trigger.ask();
            ("pass", StatusCode::ACCEPTED, "pass queued\n")
        }
        Delivery::Pull { number, head } => match &s.pulls {
            Some(tx) => {
                let _ = tx.send(PullJob {
                    number,
                    head_sha: head,
                });
                ("pull_request", StatusCode::ACCEPTED, "validation queued\n")
            }
            None => (
                "ignored",
                StatusCode::OK,
                "ignored: pull requests are not validated here\n",
            ),
        },
        Delivery::Ignored(why) => ("ignored", StatusCode::OK, why),
        Delivery::Bad(why) => ("bad", StatusCode::BAD_REQUEST, why),
    }
}

/// What a delivery whose signature checked out asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// GitHub's `ping`.
    Ping,
    /// A push to the watched branch, not only the runner's own: run a pass.
    Pass,
    /// A pull request opened, pushed to or reopened: validate its head.
    Pull {
        /// Its number.
        number: u64,
        /// Its head commit.
        head: String,
    },
    /// Nothing to do, and why.
    Ignored(&'static str),
    /// The payload is not what its event says.
    Bad(&'static str),
}

/// Read a delivery of event `event` (`X-GitHub-Event`) with payload `body`, for a runner named
/// `runner` watching `branch`. Pure, total and bounded by the payload's size (the fuzz target
/// `webhook` drives it).
pub fn parse_delivery(event: &str, body: &[u8], branch: &str, runner: &str) -> Delivery {
    match event {
        "ping" => Delivery::Ping,
        "push" => {
            let Ok(event) = serde_json::from_slice::<Value>(body) else {
                return Delivery::Bad("the push payload is not JSON\n");
            };
            if event["ref"].as_str() != Some(&format!("refs/heads/{branch}")) {
                return Delivery::Ignored("ignored: not the watched branch\n");
            }
            let mark = format!("Codex-Runner: {runner}");
            let commits = event["commits"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !commits.is_empty()
                && commits
                    .iter()
                    .all(|c| c["message"].as_str().is_some_and(|m| m.contains(&mark)))
            {
                return Delivery::Ignored("ignored: the runner's own push\n");
            }
            Delivery::Pass
        }
        "pull_request" => {
            let Ok(event) = serde_json::from_slice::<Value>(body) else {
                return Delivery::Bad("the pull_request payload is not JSON\n");
            };
            let (Some(number), Some(head)) = (
                event["number"].as_u64(),
                event["pull_request"]["head"]["sha"].as_str(),
            ) else {
                return Delivery::Bad("the pull_request payload has no number or head\n");
            };
            match event["action"].as_str().unwrap_or_default() {
                "opened" | "synchronize" | "reopened" => Delivery::Pull {
                    number,
                    head: head.to_string(),
                },
                _ => Delivery::Ignored("ignored: pull request action not validated\n"),
            }
        }
        _ => Delivery::Ignored("ignored: event not handled\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verifies_githubs_documented_example() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(secret, b"Hello, World!", good));
        assert!(!verify(secret, b"Hello, World?", good));
        assert!(!verify(b"other", b"Hello, World!", good));
        assert!(!verify(secret, b"Hello, World!", "sha1=abc"));
        assert!(!verify(secret, b"Hello, World!", "sha256=zz"));
    }

    #[test]
    fn deliveries_are_read_without_trusting_them() {
        let push = |r: &str, msg: &str| {
            serde_json::to_vec(&json!({"ref": r, "commits": [{"message": msg}]})).unwrap()
        };
        assert_eq!(parse_delivery("ping", b"", "main", "r"), Delivery::Ping);
        assert_eq!(
            parse_delivery("push", &push("refs/heads/main", "fix"), "main", "r"),
            Delivery::Pass
        );
        assert!(matches!(
            parse_delivery("push", &push("refs/heads/dev", "fix"), "main", "r"),
            Delivery::Ignored(_)
        ));
        assert!(matches!(
            parse_delivery(
                "push",
                &push("refs/heads/main", "x\n\nCodex-Runner: r\n"),
                "main",
                "r"
            ),
            Delivery::Ignored(_)
        ));
        assert!(matches!(
            parse_delivery("push", b"{", "main", "r"),
            Delivery::Bad(_)
        ));
        let pr = json!({"action": "opened", "number": 7, "pull_request": {"head": {"sha": "abc"}}});
        assert_eq!(
            parse_delivery("pull_request", pr.to_string().as_bytes(), "main", "r"),
            Delivery::Pull {
                number: 7,
                head: "abc".into()
            }
        );
        let no_head = json!({"action": "opened", "number": 7});
        assert!(matches!(
            parse_delivery("pull_request", no_head.to_string().as_bytes(), "main", "r"),
            Delivery::Bad(_)
        ));
        assert!(matches!(
            parse_delivery("issues", b"{}", "main", "r"),
            Delivery::Ignored(_)
        ));
    }

    #[test]
    fn deliveries_are_remembered_within_a_bound() {
        let s = Server::new(None, "r".into(), Arc::default(), Arc::default());
        assert!(s.first_time("a"));
        assert!(!s.first_time("a"));
        for i in 0..REMEMBERED_DELIVERIES {
            s.first_time(&i.to_string());
        }
        assert!(
            s.first_time("a"),
            "the oldest id is forgotten past the bound"
        );
    }
}
