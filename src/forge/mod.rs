//! The ONLY place that talks to the forge API (through octocrab).
//!
//! The engine describes what a request's check run should show as a [`CheckUpdate`]; this
//! module finds or creates the run and brings it up to date. Calls go through octocrab's
//! HTTP stack and authentication, but with our own request and response types (octocrab's
//! check-run model lacks `status` and `external_id`) and our own retry policy: 5xx, 429,
//! secondary rate limits and timeouts are retried with back-off, honouring `Retry-After` and
//! `x-ratelimit-reset`; octocrab's own retry layer is not compiled in, so retries never stack.
//!
//! A Gitea/Forgejo forge (commit statuses) is meant to be a second implementation of the same
//! three calls: `publish_check`, and later `register_hook` and `repository`.

use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Annotations GitHub accepts in one check-run request.
pub const ANNOTATIONS_PER_CALL: usize = 50;

/// Which repository on which forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeRepo {
    /// API base URL (`https://api.github.com`, or a GitHub Enterprise / test URL).
    pub api_url: String,
    /// Owner (user or organisation).
    pub owner: String,
    /// Repository name.
    pub name: String,
}

/// The final conclusion of a check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    /// The request succeeded.
    Success,
    /// The handler failed.
    Failure,
    /// The handler timed out.
    TimedOut,
    /// The request was rejected: someone has to fix it.
    ActionRequired,
    /// The run was cancelled.
    Cancelled,
}

/// Where a check run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "conclusion")]
pub enum CheckState {
    /// Found, waiting to run.
    Queued,
    /// Its container started.
    InProgress,
    /// Finished.
    Completed(Conclusion),
}

/// A line-level remark shown in the pull request's diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    /// File path in the repository.
    pub path: String,
    /// First line (1-based).
    pub start_line: usize,
    /// Last line.
    pub end_line: usize,
    /// `failure`, `warning` or `notice`.
    pub annotation_level: String,
    /// What is wrong.
    pub message: String,
    /// Short title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// What one check run should show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckUpdate {
    /// Check name (`codex-runner/<id>`).
    pub name: String,
    /// The commit it is attached to.
    pub head_sha: String,
    /// Our key for the run (the request id), so a retried create finds it.
    pub external_id: String,
    /// Status and conclusion.
    pub state: CheckState,
    /// When the container started (RFC 3339).
    pub started_at: Option<String>,
    /// Output title.
    pub title: String,
    /// Output summary (Markdown).
    pub summary: String,
    /// Output text (Markdown), e.g. the last lines of the log.
    pub text: Option<String>,
    /// Link to the details (the log on the branch).
    pub details_url: Option<String>,
    /// Line remarks; sent 50 per call.
    pub annotations: Vec<Annotation>,
}

/// A forge call that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge refused the call (4xx other than rate limits): retrying will not help.
    #[error("the forge refused {call}: {status} {message}")]
    Refused {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// The forge did not answer well after every retry.
    #[error("the forge did not answer {call}: {detail}")]
    Unavailable {
        /// Method and path.
        call: String,
        /// The last failure.
        detail: String,
    },
}

/// A failure that may pass: retried after `wait` (the forge's own figure) or the back-off.
#[derive(Debug)]
struct Transient {
    detail: String,
    wait: Option<Duration>,
}

/// A GitHub (github.com or Enterprise Server) repository's API.
#[derive(Clone)]
pub struct GitHub {
    client: Octocrab,
    repo: ForgeRepo,
    attempts: usize,
    min_delay: Duration,
}

impl GitHub {
    /// A client authenticated with a personal or fine-grained `token`.
    pub fn with_token(repo: ForgeRepo, token: &str) -> anyhow::Result<Self> {
        let client = Octocrab::builder()
            .base_uri(repo.api_url.as_str())
            .context("failed to use the forge API URL")?
            .personal_token(token.to_string())
            .build()
            .context("failed to build the forge client")?;
        Ok(GitHub {
            client,
            repo,
            attempts: 6,
            min_delay: Duration::from_millis(500),
        })
    }

    /// Change how hard calls are retried (tests use short delays).
    pub fn with_retries(mut self, attempts: usize, min_delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.min_delay = min_delay;
        self
    }

    /// The repository this client speaks for.
    pub fn repo(&self) -> &ForgeRepo {
        &self.repo
    }

    /// Make the check run of `update` show it; returns the run's id. `known` skips the lookup.
    pub async fn publish_check(
        &self,
        update: &CheckUpdate,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        let id = match known {
            Some(id) => Some(id),
            None => {
                self.find_check(&update.head_sha, &update.name, &update.external_id)
                    .await?
            }
        };
        let mut chunks = update.annotations.chunks(ANNOTATIONS_PER_CALL);
        let first = chunks.next().unwrap_or(&[]);
        let body = check_body(update, first);
        let id = match id {
            Some(id) => {
                self.call(
                    "PATCH",
                    &format!("{}/check-runs/{id}", self.base()),
                    Some(body),
                )
                .await?;
                id
            }
            None => {
                let created = self
                    .call("POST", &format!("{}/check-runs", self.base()), Some(body))
                    .await?;
                created["id"].as_u64().ok_or_else(|| ForgeError::Refused {
                    call: "POST check-runs".into(),
                    status: 200,
                    message: "the answer has no id".into(),
                })?
            }
        };
        for chunk in chunks {
            let body = json!({"output": {"title": update.title, "summary": update.summary, "annotations": chunk}});
            self.call(
                "PATCH",
                &format!("{}/check-runs/{id}", self.base()),
                Some(body),
            )
            .await?;
        }
        Ok(id)
    }

    /// The id of the run named `name` on `sha` whose external id is ours.
    pub async fn find_check(
        &self,
        sha: &str,
        name: &str,
        external_id: &str,
    ) -> Result<Option<u64>, ForgeError> {
        let path = format!(
            "{}/commits/{sha}/check-runs?check_name={}&filter=all",
            self.base(),
            encode(name)
        );
        let list = self.call("GET", &path, None).await?;
        Ok(list["check_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["name"] == name && r["external_id"].as_str().is_none_or(|e| e == external_id)
            })
            .and_then(|r| r["id"].as_u64()))
    }

    /// The current status and conclusion of run `id`.
    pub async fn check_status(&self, id: u64) -> Result<(String, Option<String>), ForgeError> {
        let run = self
            .call("GET", &format!("{}/check-runs/{id}", self.base()), None)
            .await?;
        Ok((
            run["status"].as_str().unwrap_or_default().to_string(),
            run["conclusion"].as_str().map(str::to_string),
        ))
    }

    /// What the credentials may do on the repository: `(pull, push, admin)`.
    pub async fn permissions(&self) -> Result<(bool, bool, bool), ForgeError> {
        let repo = self.call("GET", &self.base(), None).await?;
        let p = &repo["permissions"];
        let flag = |k: &str| p[k].as_bool().unwrap_or(false);
        Ok((flag("pull"), flag("push"), flag("admin")))
    }

    /// The repository's webhooks as `(id, url)`.
    pub async fn hooks(&self) -> Result<Vec<(u64, String)>, ForgeError> {
        let list = self
            .call("GET", &format!("{}/hooks", self.base()), None)
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h["id"].as_u64()?, h["config"]["url"].as_str()?.to_string())))
            .collect())
    }

    /// Point a webhook at `url` for push and pull_request events signed with `secret`:
    /// the one already at that URL is updated, so registering twice leaves one hook.
    pub async fn upsert_hook(&self, url: &str, secret: &str) -> Result<u64, ForgeError> {
        let body = json!({
            "name": "web",
            "active": true,
            "events": ["push", "pull_request"],
            "config": {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"},
        });
        let existing = self.hooks().await?.into_iter().find(|(_, u)| u == url);
        let answer = match existing {
            Some((id, _)) => {
                self.call("PATCH", &format!("{}/hooks/{id}", self.base()), Some(body))
                    .await?
            }
            None => {
                self.call("POST", &format!("{}/hooks", self.base()), Some(body))
                    .await?
            }
        };
        answer["id"].as_u64().ok_or_else(|| ForgeError::Refused {
            call: "hooks".into(),
            status: 200,
            message: "the answer has no id".into(),
        })
    }

    /// Delete every webhook pointing at `url`; how many there were.
    pub async fn delete_hooks_to(&self, url: &str) -> Result<usize, ForgeError> {
        let mut n = 0;
        for (id, _) in self.hooks().await?.into_iter().filter(|(_, u)| u == url) {
            self.call("DELETE", &format!("{}/hooks/{id}", self.base()), None)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Open a pull request from `head` into `base`; its number.
    pub async fn create_pull(
        &self,
        title: &str,
        head: &str,
        base: &str,
    ) -> Result<u64, ForgeError> {
        let body = json!({"title": title, "head": head, "base": base});
        let pr = self
            .call("POST", &format!("{}/pulls", self.base()), Some(body))
            .await?;
        Ok(pr["number"].as_u64().unwrap_or_default())
    }

    /// Merge pull request `number`; the merge commit.
    pub async fn merge_pull(&self, number: u64) -> Result<String, ForgeError> {
        let merged = self
            .call(
                "PUT",
                &format!("{}/pulls/{number}/merge", self.base()),
                Some(json!({})),
            )
            .await?;
        Ok(merged["sha"].as_str().unwrap_or_default().to_string())
    }

    /// The check runs on `sha`, as the API gives them.
    pub async fn check_runs(&self, sha: &str) -> Result<Vec<Value>, ForgeError> {
        let list = self
            .call(
                "GET",
                &format!("{}/commits/{sha}/check-runs", self.base()),
                None,
            )
            .await?;
        Ok(list["check_runs"].as_array().cloned().unwrap_or_default())
    }

    /// The annotations of check run `id`.
    pub async fn annotations(&self, id: u64) -> Result<Vec<Value>, ForgeError> {
        let list = self
            .call(
                "GET",
                &format!("{}/check-runs/{id}/annotations", self.base()),
                None,
            )
            .await?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    fn base(&self) -> String {
        format!("/repos/{}/{}", self.repo.owner, self.repo.name)
    }

    /// One API call with the retry policy; the JSON answer.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ForgeError> {
        let name = format!("{method} {path}");
        let attempt = || async { self.once(method, path, body.as_ref()).await };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|e: &Result<Transient, ForgeError>| e.is_ok())
            .adjust(|e, planned| match e {
                Ok(Transient { wait: Some(w), .. }) => Some(planned.map_or(*w, |p| p.max(*w))),
                _ => planned,
            })
            .notify(|e, wait| {
                if let Ok(t) = e {
                    tracing::warn!(call = %name, retry_in = ?wait, "forge call failed: {}", t.detail);
                }
            })
            .await
            .map_err(|e| match e {
                Ok(t) => ForgeError::Unavailable { call: name.clone(), detail: t.detail },
                Err(refused) => refused,
            })
    }

    /// One attempt: `Err(Ok(_))` may pass, `Err(Err(_))` will not.
    async fn once(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Result<Transient, ForgeError>> {
        let transient =
            |detail: String, wait: Option<Duration>| Err(Ok(Transient { detail, wait }));
        let sent = match method {
            "GET" => self.client._get(path).await,
            "POST" => self.client._post(path, body).await,
            "PATCH" => self.client._patch(path, body).await,
            "DELETE" => self.client._delete(path, body).await,
            "PUT" => self.client._put(path, body).await,
            other => {
                return Err(Err(ForgeError::Refused {
                    call: path.into(),
                    status: 0,
                    message: format!("unsupported method {other}"),
                }))
            }
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => return transient(format!("{e}"), None),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return transient(format!("reading the answer failed: {e}"), None),
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["message"].as_str().unwrap_or_default().to_string();
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let reset = (header("x-ratelimit-remaining").as_deref() == Some("0"))
            .then(|| header("x-ratelimit-reset").and_then(|s| s.parse::<u64>().ok()))
            .flatten()
            .map(|at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Duration::from_secs(at.saturating_sub(now).min(3600))
            });
        let rate_limited = status == 429
            || (status == 403
                && (retry_after.is_some() || reset.is_some() || message.contains("rate limit")));
        if status >= 500 || rate_limited {
            return transient(format!("{status} {message}"), retry_after.or(reset));
        }
        Err(Err(ForgeError::Refused {
            call: format!("{method} {path}"),
            status,
            message,
        }))
    }
}

fn check_body(update: &CheckUpdate, annotations: &[Annotation]) -> Value {
    let mut body = json!({
        "name": update.name,
        "head_sha": update.head_sha,
        "external_id": update.external_id,
        "output": {"title": update.title, "summary": update.summary, "annotations": annotations},
    });
    if let Some(t) = &update.text {
        body["output"]["text"] = json!(t);
    }
    if let Some(u) = &update.details_url {
        body["details_url"] = json!(u);
    }
    if let Some(s) = &update.started_at {
        body["started_at"] = json!(s);
    }
    match update.state {
        CheckState::Queued => body["status"] = json!("queued"),
        CheckState::InProgress => body["status"] = json!("in_progress"),
        CheckState::Completed(c) => {
            body["status"] = json!("completed");
            body["conclusion"] = serde_json::to_value(c).unwrap_or(Value::Null);
        }
    }
    body
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
