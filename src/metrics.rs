//! Prometheus metrics: what the runner did and is doing, counted where the engine's lifecycle
//! says a request or a pass moved (see `engine/lifecycle.rs`), never inside I/O code.
//!
//! One [`Metrics`] per process (see [`global`]); the daemon serves it on its metrics listener
//! and `dispatch --once --metrics-file` writes it for node_exporter's textfile collector.
//! Names follow Prometheus conventions: a `codex_runner_` prefix, seconds, `_total` counters.
//! Labels hold only bounded values: a request's kind is the handler it was routed to (a
//! refused request, whose kind may be anything a writer typed, counts under `kind=""`).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::record::State;

/// How a pass ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PassOutcome {
    /// It completed.
    ok,
    /// It failed (the contract, git, the executor, the forge).
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    outcome: PassOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    libgit2: String,
}

/// Seconds a request runs or waits: 0.1 s to an hour.
fn long_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

/// Seconds a container takes to start: 10 ms to 30 s.
fn short_buckets() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// Every metric the runner keeps.
pub struct Metrics {
    registry: Registry,
    passes: Family<PassLabels, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    queue_wait: Histogram,
    container_start: Histogram,
    running: Gauge,
    queued: Gauge,
    lock_waits: Counter,
    pushes: Counter,
    replays: Counter,
    pending_results: Gauge,
    pending_checks: Gauge,
    forge_calls: Family<OutcomeLabels, Counter>,
    forge_retries: Counter,
    deliveries: Family<OutcomeLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("codex_runner");
        let m = Metrics {
            passes: Family::default(),
            last_success: Gauge::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(long_buckets),
            queue_wait: long_buckets(),
            container_start: short_buckets(),
            running: Gauge::default(),
            queued: Gauge::default(),
            lock_waits: Counter::default(),
            pushes: Counter::default(),
            replays: Counter::default(),
            pending_results: Gauge::default(),
            pending_checks: Gauge::default(),
            forge_calls: Family::default(),
            forge_retries: Counter::default(),
            deliveries: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                libgit2: crate::git::libgit2_version(),
            })
            .set(1);
        r.register(
            "build_info",
            "The running codex-runner's version (always 1)",
            build,
        );
        r.register(
            "passes",
            "Passes over the branch, by outcome",
            m.passes.clone(),
        );
        r.register(
            "last_successful_pass_timestamp_seconds",
            "When the last pass that completed ended (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "requests",
            "Requests recorded, by handler kind and final state",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "How long requests' containers ran, by handler kind",
            m.duration.clone(),
        );
        r.register(
            "request_queue_wait_seconds",
            "How long requests waited between being found and their container starting",
            m.queue_wait.clone(),
        );
        r.register(
            "container_start_seconds",
            "How long the executor took to start a container",
            m.container_start.clone(),
        );
        r.register(
            "requests_running",
            "Requests whose container runs now",
            m.running.clone(),
        );
        r.register(
            "requests_queued",
            "Requests found and waiting for their lock, a slot or their claim",
            m.queued.clone(),
        );
        r.register(
            "lock_waits",
            "Requests that waited for another request's resource lock",
            m.lock_waits.clone(),
        );
        r.register(
            "pushes",
            "Result commits pushed to the branch",
            m.pushes.clone(),
        );
        r.register(
            "push_replays",
            "Result pushes refused because the branch moved, then replayed on its new tip",
            m.replays.clone(),
        );
        r.register(
            "pending_results",
            "Results recorded but not yet on the branch",
            m.pending_results.clone(),
        );
        r.register(
            "pending_check_updates",
            "Check-run or status updates the forge has not taken yet",
            m.pending_checks.clone(),
        );
        r.register(
            "forge_calls",
            "Forge API calls, by outcome (ok, refused, unavailable after retries)",
            m.forge_calls.clone(),
        );
        r.register(
            "forge_retries",
            "Forge API calls tried again after a transient failure",
            m.forge_retries.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries, by outcome",
            m.deliveries.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format (what Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text format 0.0.4, which node_exporter's textfile
    /// collector reads.
    pub fn encode_prometheus_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// A pass ended: its outcome, the results it pushed and replayed, the results it left
    /// unpushed, and, when it completed, the time.
    pub fn pass_ended(&self, outcome: PassOutcome, pushes: u64, replays: u64, pending: usize) {
        self.passes.get_or_create(&PassLabels { outcome }).inc();
        self.pushes.inc_by(pushes);
        self.replays.inc_by(replays);
        self.pending_results
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if outcome == PassOutcome::ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_success.set(now);
        }
    }

    /// A pass before this process's last succeeded at `unix_seconds` (kept unless a later
    /// one did).
    pub fn remember_last_success(&self, unix_seconds: f64) {
        if self.last_success.get() < unix_seconds {
            self.last_success.set(unix_seconds);
        }
    }

    /// A forge API call ended: `ok`, `refused` (the forge said no) or `unavailable` (it
    /// failed after every retry).
    pub fn forge_called(&self, outcome: &'static str) {
        self.forge_calls
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A forge API call is tried again.
    pub fn forge_retried(&self) {
        self.forge_retries.inc();
    }

    /// A webhook delivery was answered: how it counts (`pass`, `pull_request`, `ping`,
    /// `ignored`, `duplicate`, `bad_signature`, `no_secret`, `bad`).
    pub fn delivery(&self, outcome: &'static str) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Check updates the forge has not taken yet.
    pub fn pending_check_updates(&self, count: usize) {
        self.pending_checks
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// `count` requests joined the queues; they wait until [`Waiting`] lets each go.
    pub fn waiting(self: &Arc<Self>, count: usize) -> Waiting {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.queued.inc_by(count);
        Waiting {
            metrics: self.clone(),
            left: count,
        }
    }

    /// A request waited for another's lock.
    pub fn lock_waited(&self) {
        self.lock_waits.inc();
    }

    /// A request's container started `waited` after the request was found, the executor
    /// taking `start` for it.
    pub fn started(&self, waited: Duration, start: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
        self.container_start.observe(start.as_secs_f64());
    }

    /// A request's container runs (started or followed) until the guard goes.
    pub fn running(self: &Arc<Self>) -> Running {
        self.running.inc();
        Running {
            metrics: self.clone(),
        }
    }

    /// A request was recorded in `state`; `kind` is its routed handler (empty when refused),
    /// `ran` how long its container ran, if one did.
    pub fn ended(&self, kind: &str, state: State, ran: Option<Duration>) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: kind.to_string(),
                state: state.as_str().to_string(),
            })
            .inc();
        if let Some(ran) = ran {
            self.duration
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .observe(ran.as_secs_f64());
        }
    }

    /// How many requests were recorded with `kind` in `state` (for tests and `status`).
    pub fn recorded(&self, kind: &str, state: State) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                kind: kind.to_string(),
                state: state.as_str().to_string(),
            })
            .get()
    }

    /// Requests whose container runs now.
    pub fn running_now(&self) -> i64 {
        self.running.get()
    }

    /// Requests waiting in the queues now.
    pub fn queued_now(&self) -> i64 {
        self.queued.get()
    }
}

/// Requests waiting in a queue: each leaves by [`Waiting::leave`], the rest when the queue
/// ends whichever way.
pub struct Waiting {
    metrics: Arc<Metrics>,
    left: i64,
}

impl Waiting {
    /// One request left the queue (its turn came, or it was left for a later pass).
    pub fn leave(&mut self) {
        if self.left > 0 {
            self.left -= 1;
            self.metrics.queued.dec();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.metrics.queued.dec_by(self.left);
    }
}

/// A running container, counted until dropped.
pub struct Running {
    metrics: Arc<Metrics>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics.running.dec();
    }
}

/// The process's metrics.
pub fn global() -> Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::new())).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_in_prometheus_terms() {
        let m = Arc::new(Metrics::new());
        m.pass_ended(PassOutcome::ok, 2, 1, 0);
        m.pass_ended(PassOutcome::failed, 0, 0, 3);
        m.ended("echo", State::Succeeded, Some(Duration::from_millis(1500)));
        m.ended("", State::Rejected, None);
        m.started(Duration::from_secs(2), Duration::from_millis(300));
        m.lock_waited();
        let text = m.encode();
        for line in [
            "codex_runner_passes_total{outcome=\"ok\"} 1",
            "codex_runner_passes_total{outcome=\"failed\"} 1",
            "codex_runner_pushes_total 2",
            "codex_runner_push_replays_total 1",
            "codex_runner_pending_results 3",
            "codex_runner_requests_total{kind=\"echo\",state=\"succeeded\"} 1",
            "codex_runner_requests_total{kind=\"\",state=\"rejected\"} 1",
            "codex_runner_request_duration_seconds_sum{kind=\"echo\"} 1.5",
            "codex_runner_request_duration_seconds_count{kind=\"echo\"} 1",
            "codex_runner_request_queue_wait_seconds_count 1",
            "codex_runner_container_start_seconds_sum 0.3",
            "codex_runner_lock_waits_total 1",
            "codex_runner_requests_running 0",
            "codex_runner_requests_queued 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(
            text.contains("codex_runner_build_info{version=\""),
            "{text}"
        );
        assert!(
            text.contains("codex_runner_last_successful_pass_timestamp_seconds 1"),
            "{text}"
        );
    }

    #[test]
    fn the_dashboard_asks_only_for_metrics_the_runner_exposes() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../docs/grafana/codex-runner.json")).unwrap();
        // Families with labels show once they have a sample.
        let m = Metrics::new();
        m.pass_ended(PassOutcome::ok, 1, 0, 0);
        m.ended("echo", State::Succeeded, Some(Duration::from_secs(1)));
        m.forge_called("ok");
        m.delivery("pass");
        let exposed = m.encode_prometheus_text();
        let families: Vec<&str> = exposed
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut asked = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(at) = rest.find("codex_runner_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    assert!(
                        families.contains(&family),
                        "panel {} asks for {name}, which is not exposed",
                        panel["title"]
                    );
                    asked.insert(family.to_string());
                }
            }
        }
        // And it shows every one (build_info names the runners to choose from).
        for family in families {
            assert!(
                family == "codex_runner_build_info" || asked.contains(family),
                "no panel shows {family}"
            );
        }
    }

    #[test]
    fn gauges_follow_their_guards_however_the_work_ends() {
        let m = Arc::new(Metrics::new());
        {
            let mut waiting = m.waiting(3);
            assert_eq!(m.queued_now(), 3);
            waiting.leave();
            let running = m.running();
            assert_eq!((m.queued_now(), m.running_now()), (2, 1));
            drop(running);
            // The queue stops early: the two left stop counting as queued.
        }
        assert_eq!((m.queued_now(), m.running_now()), (0, 0));
    }
}
