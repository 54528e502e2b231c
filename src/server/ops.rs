//! The operator's listener (`[server] metrics_listen`, loopback by default), apart from the
//! webhook's public one: `GET /metrics`, `GET /healthz` (the process answers), `GET /readyz`
//! (it can do its work: 200, or 503 with a short reason), `GET /status` (what it is doing, as
//! JSON, for `codex-runner status`). Error details stay in the logs and the metrics; `/readyz`
//! says which check failed, not why.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{Health, Trigger};
use crate::exec::ExecutorChoice;
use crate::metrics::Metrics;

/// What the operator's endpoints read.
pub struct Operator {
    /// This runner's name.
    pub runner: String,
    /// What the daemon did so far.
    pub health: Arc<Health>,
    /// Where passes are asked for.
    pub trigger: Arc<Trigger>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Where handlers run: asked on each `/readyz` whether it answers.
    pub executor: ExecutorChoice,
    /// How long the remote may go unheard before the runner is not ready (a few poll
    /// intervals: polling hears it even when nothing moves).
    pub remote_fresh: Duration,
    /// [`fingerprint`] of the webhook secret the daemon checks deliveries with, so `verify`
    /// can tell whether the file still holds it (never the secret itself).
    pub secret_fingerprint: Option<String>,
}

/// A short, one-way name of a secret: the first 16 hex digits of its SHA-256.
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(secret)[..8])
}

/// How long `/readyz` waits for the executor to answer.
const EXECUTOR_ANSWERS_WITHIN: Duration = Duration::from_secs(3);

/// The operator's routes.
pub fn router(ops: Arc<Operator>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Operator>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.encode(),
    )
}

async fn readyz(State(ops): State<Arc<Operator>>) -> (StatusCode, String) {
    let verdict = match readiness(&ops.health, Instant::now(), ops.remote_fresh) {
        Ok(()) => executor_answers(&ops.executor).await,
        Err(why) => Err(why),
    };
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Whether the executor answers, within [`EXECUTOR_ANSWERS_WITHIN`].
async fn executor_answers(executor: &ExecutorChoice) -> Result<(), String> {
    match tokio::time::timeout(EXECUTOR_ANSWERS_WITHIN, executor.connect()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err("the container engine does not answer".into()),
        Err(_) => Err(format!(
            "the container engine did not answer within {}s",
            EXECUTOR_ANSWERS_WITHIN.as_secs()
        )),
    }
}

/// What the daemon's own record says about its readiness at `now`: a pass finished, the
/// last one succeeded, and the remote answered within `fresh`.
pub fn readiness(health: &Health, now: Instant, fresh: Duration) -> Result<(), String> {
    if health.passes.load(Ordering::Relaxed) == 0 {
        return Err("the first pass has not finished".into());
    }
    if health.last_error.lock().map_or(true, |e| e.is_some()) {
        return Err("the last pass failed".into());
    }
    let heard = health.remote_answered.lock().ok().and_then(|t| *t);
    match heard {
        Some(at) if now.saturating_duration_since(at) <= fresh => Ok(()),
        Some(at) => Err(format!(
            "the remote has not answered for {}s",
            now.saturating_duration_since(at).as_secs()
        )),
        None => Err("the remote has not answered yet".into()),
    }
}

async fn status(State(ops): State<Arc<Operator>>) -> Json<serde_json::Value> {
    let h = &ops.health;
    Json(json!({
        "runner": ops.runner,
        "branch": h.branch.lock().map(|b| b.clone()).unwrap_or_default(),
        "passes": h.passes.load(Ordering::Relaxed),
        "failed_passes": h.failed.load(Ordering::Relaxed),
        "deliveries": h.deliveries.load(Ordering::Relaxed),
        "passes_asked": ops.trigger.asked(),
        "running": ops.metrics.running_now(),
        "queued": ops.metrics.queued_now(),
        "last_error": h.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        "webhook_secret_sha256": ops.secret_fingerprint,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_finished_pass_a_clean_last_one_and_a_remote_heard_lately() {
        let h = Health::default();
        let fresh = Duration::from_secs(180);
        let now = Instant::now();
        let said = |h: &Health, now| readiness(h, now, fresh).unwrap_err();
        assert_eq!(said(&h, now), "the first pass has not finished");
        h.passes.store(1, Ordering::Relaxed);
        *h.last_error.lock().unwrap() = Some("git failed: secret/internal/path".into());
        let why = said(&h, now);
        assert_eq!(why, "the last pass failed", "no details on the port");
        *h.last_error.lock().unwrap() = None;
        assert_eq!(said(&h, now), "the remote has not answered yet");
        *h.remote_answered.lock().unwrap() = Some(now);
        assert_eq!(readiness(&h, now, fresh), Ok(()));
        let later = now + Duration::from_secs(600);
        assert_eq!(said(&h, later), "the remote has not answered for 600s");
    }
}
