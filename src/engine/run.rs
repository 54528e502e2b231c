//! One request from claim to recorded result: image, checkout, container, log, status.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::contract::handlers::ImageSource;
use crate::contract::Violation;
use crate::exec::spec::{container_spec, RunContext};
use crate::exec::{ExecError, OutputEvent};
use crate::plan::{Runnable, WorkItem};
use crate::record::{now, write_status, RunLog, State, Status};

use super::{Finished, PassContext};

/// Files of one request's result in the state directory, before they are published.
pub(crate) struct ResultDir {
    pub dir: PathBuf,
}

impl ResultDir {
    pub fn fresh(root: &Path, log_id: &str) -> anyhow::Result<Self> {
        let dir = root.join(log_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("failed to clear {}", dir.display()))?;
        }
        crate::exec::ensure_world_readable_dir(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(ResultDir { dir })
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
}

/// A status for a request that never started a container.
fn unstarted(
    cx: &PassContext,
    item: &WorkItem,
    kind: &str,
    state: State,
    reason: String,
    resource: Option<String>,
) -> Status {
    Status {
        id: item.log_id.clone(),
        kind: kind.to_string(),
        state,
        exit_code: None,
        reason: Some(reason),
        attempt: 1,
        started_at: None,
        finished_at: now(),
        duration_ms: 0,
        runner: cx.runner.clone(),
        commit: item.commit.clone(),
        image: None,
        file: item.file.clone(),
        resource,
    }
}

/// Record a request rejected by the planner.
pub(crate) fn record_rejection(
    cx: &PassContext,
    item: &WorkItem,
    violations: &[Violation],
) -> anyhow::Result<Finished> {
    let out = ResultDir::fresh(&cx.results_dir, &item.log_id)?;
    let mut log = RunLog::create(&out.log(), &item.log_id)?;
    log.event(
        "received",
        json!({"file": item.file, "commit": item.commit}),
    )?;
    let reason = violations
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    log.event("rejected", json!({"violations": violations}))?;
    log.event("finished", json!({"state": "rejected", "reason": reason}))?;
    let status = unstarted(cx, item, "", State::Rejected, reason, None);
    write_status(&out.status(), &status)?;
    Ok(Finished {
        status,
        dir: out.dir,
    })
}

/// Why a request could not reach a final state; it runs again in a later pass.
#[derive(Debug)]
pub(crate) enum RunFailure {
    /// The Docker engine failed.
    Docker(anyhow::Error),
    /// Anything else: the state directory, the checkout, the lock.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for RunFailure {
    fn from(e: anyhow::Error) -> Self {
        RunFailure::Other(e)
    }
}

impl From<std::io::Error> for RunFailure {
    fn from(e: std::io::Error) -> Self {
        RunFailure::Other(e.into())
    }
}

impl From<serde_json::Error> for RunFailure {
    fn from(e: serde_json::Error) -> Self {
        RunFailure::Other(e.into())
    }
}

/// Run one request. `Err` means infrastructure failed: nothing is recorded and it runs again later.
pub(crate) async fn execute(
    cx: &PassContext,
    item: &WorkItem,
    runnable: &Runnable,
    waited_for: Option<String>,
) -> Result<Finished, RunFailure> {
    let out = ResultDir::fresh(&cx.results_dir, &item.log_id)?;
    let result = execute_in(cx, item, runnable, &out, waited_for).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&out.dir);
    }
    result
}

async fn execute_in(
    cx: &PassContext,
    item: &WorkItem,
    runnable: &Runnable,
    out: &ResultDir,
    waited_for: Option<String>,
) -> Result<Finished, RunFailure> {
    let request = &runnable.request;
    let kind = request.kind.as_str();
    let mut log = RunLog::create(&out.log(), &item.log_id)?;
    log.event(
        "received",
        json!({"file": item.file, "commit": item.commit}),
    )?;
    log.event(
        "validated",
        json!({"kind": kind, "resource": runnable.resource, "timeout_ms": runnable.timeout.as_millis() as u64}),
    )?;
    if let Some(holder) = waited_for {
        log.event("waited_for_lock", json!({"resource": holder}))?;
    }
    let reject = |log: &mut RunLog, reason: String| -> Result<Finished, RunFailure> {
        log.event("rejected", json!({"reason": reason}))?;
        log.event("finished", json!({"state": "rejected", "reason": reason}))?;
        let status = unstarted(
            cx,
            item,
            kind,
            State::Rejected,
            reason,
            Some(runnable.resource.clone()),
        );
        write_status(&out.status(), &status)?;
        Ok(Finished {
            status,
            dir: out.dir.clone(),
        })
    };
    let routed = match cx.indexes.get(&item.commit) {
        Some(index) => index.route(kind),
        None => Err(format!("no handler index was loaded for {}", item.commit)),
    };
    let handler = match routed {
        Ok(h) => h,
        Err(msg) => return reject(&mut log, msg),
    };
    let commit = crate::git::parse_oid(&item.commit)?;
    let repo_dir = cx.checkout(commit).await?;
    let image = match &handler.image {
        ImageSource::Reference(r) => cx
            .executor()
            .map_err(RunFailure::Docker)?
            .ensure_image(r)
            .await
            .map(|()| r.clone()),
        ImageSource::Build(dir) => {
            let tree = cx.object_id(commit, &format!("containers/{dir}")).await?;
            let tag = format!("codex-runner-build/{dir}:{}", &tree[..12.min(tree.len())]);
            let context = repo_dir.join("containers").join(dir);
            let _one_build = cx.builds.lock().await;
            cx.executor()
                .map_err(RunFailure::Docker)?
                .ensure_built(&tag, &context)
                .await
                .map(|()| tag)
        }
    };
    let image = match image {
        Ok(i) => i,
        Err(ExecError::ImageUnavailable(reason)) => return reject(&mut log, reason),
        Err(ExecError::Engine(e)) => return Err(RunFailure::Docker(e)),
    };
    let request_json = out.dir.join("request.json");
    let mut doc = request.document.clone();
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("id".into(), json!(request.id.as_str()));
        obj.insert("file".into(), json!(item.file));
        obj.insert("commit".into(), json!(item.commit));
        obj.insert("resource".into(), json!(runnable.resource));
    }
    std::fs::write(&request_json, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("failed to write {}", request_json.display()))?;
    let ctx = RunContext {
        runner: cx.runner.clone(),
        request_id: request.id.to_string(),
        scope: cx.scope.clone(),
        attempt: 1,
        commit: item.commit.clone(),
        image: image.clone(),
        repo_dir,
        request_json,
        timeout: runnable.timeout,
        params: request.params.clone(),
    };
    let spec = match container_spec(handler, &ctx, &cx.limits) {
        Ok(s) => s,
        Err(reason) => return reject(&mut log, reason),
    };
    let started_at = now();
    let clock = Instant::now();
    cx.check(super::checks::CheckEvent::Started {
        id: item.log_id.clone(),
        commit: item.commit.clone(),
        started_at: started_at.clone(),
    });
    log.event(
        "started",
        json!({"container": spec.name, "image": image, "attempt": 1, "user": spec.user, "network": spec.network}),
    )?;
    let mut write_error: Option<anyhow::Error> = None;
    let outcome = cx
        .executor()?
        .run(
            &spec,
            |event| {
                let r = match event {
                    OutputEvent::Line(stream, line) => {
                        log.event("output", json!({"stream": stream.as_str(), "line": line}))
                    }
                    OutputEvent::Truncated { cap } => log.event(
                        "output_truncated",
                        json!({"cap_bytes": cap, "note": "output past the cap was dropped"}),
                    ),
                };
                if let (Err(e), None) = (r, &write_error) {
                    write_error = Some(e);
                }
            },
            cx.shutdown.reached(super::shutdown::Stage::Cancel),
        )
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(ExecError::ImageUnavailable(reason)) => return reject(&mut log, reason),
        Err(ExecError::Engine(e)) => return Err(RunFailure::Docker(e)),
    };
    if let Some(e) = write_error {
        return Err(RunFailure::Other(
            e.context("failed to stream output to the run log"),
        ));
    }
    let duration_ms = clock.elapsed().as_millis() as u64;
    log.event("exit", json!({"exit_code": outcome.exit_code, "oom_killed": outcome.oom_killed, "output_bytes": outcome.output_bytes}))?;
    let (state, reason) = if outcome.cancelled {
        (
            State::Cancelled,
            Some("cancelled: the runner was stopping".to_string()),
        )
    } else if outcome.timed_out {
        (
            State::TimedOut,
            Some(format!(
                "timeout after {}",
                crate::contract::units::format_duration(runnable.timeout)
            )),
        )
    } else if outcome.oom_killed {
        (State::Failed, Some("oom".to_string()))
    } else if outcome.exit_code == Some(0) {
        (State::Succeeded, None)
    } else {
        (
            State::Failed,
            Some(format!(
                "exit code {}",
                outcome
                    .exit_code
                    .map_or("unknown".into(), |c| c.to_string())
            )),
        )
    };
    log.event(
        "finished",
        json!({"state": state.as_str(), "reason": reason, "duration_ms": duration_ms}),
    )?;
    let status = Status {
        id: item.log_id.clone(),
        kind: kind.to_string(),
        state,
        exit_code: outcome.exit_code,
        reason,
        attempt: 1,
        started_at: Some(started_at),
        finished_at: now(),
        duration_ms,
        runner: cx.runner.clone(),
        commit: item.commit.clone(),
        image: Some(image),
        file: item.file.clone(),
        resource: Some(runnable.resource.clone()),
    };
    write_status(&out.status(), &status)?;
    Ok(Finished {
        status,
        dir: out.dir.clone(),
    })
}
