//! One request from claim to recorded result: image, checkout, container, log, status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::contract::handlers::ImageSource;
use crate::contract::handlers::SecretDelivery;
use crate::contract::Violation;
use crate::exec::spec::{container_name, container_spec, RunContext};
use crate::exec::{ExecError, OutputEvent};
use crate::plan::{Runnable, WorkItem};
use crate::record::{now, unix_ms, write_status, RunLog, State, Status};

use super::journal::{self, AttemptRecord, Phase, Recovery};
use super::{Finished, PassContext};

/// Files of one request's result in the state directory, before they are published.
pub(crate) struct ResultDir {
    pub dir: PathBuf,
}

impl ResultDir {
    /// The result directory of `log_id` under `root`, as it is now.
    pub fn of(root: &Path, log_id: &str) -> Self {
        ResultDir {
            dir: root.join(log_id),
        }
    }

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
    /// The git remote failed (a claim).
    Git(anyhow::Error),
    /// Anything else: the state directory, the checkout, the lock.
    Other(anyhow::Error),
}

/// Forget this runner's unfinished attempt at `id` (another runner has the request): its
/// container, if one is left, and its journal.
pub(crate) async fn abandon(cx: &PassContext, id: &str) {
    let dir = cx.results_dir.join(id);
    if let Some(rec) = journal::read(&dir) {
        tracing::warn!(id, container = %rec.container, "another runner has this request: dropping this runner's unfinished attempt");
        if let Ok(docker) = cx.executor() {
            docker.remove(&rec.container).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
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

/// Run one request, or go on with the attempt a dead runner process left (`recovery`).
/// `Err` means infrastructure failed: nothing is recorded and the request is taken up again
/// in a later pass — from its journal, if its container ran.
pub(crate) async fn execute(
    cx: &PassContext,
    item: &WorkItem,
    runnable: &Runnable,
    waited_for: Option<String>,
    recovery: Option<Recovery>,
) -> Result<Finished, RunFailure> {
    let out = match recovery {
        None => ResultDir::fresh(&cx.results_dir, &item.log_id)?,
        // Go on in the directory an earlier process left (a takeover starts one).
        Some(_) => {
            let out = ResultDir::of(&cx.results_dir, &item.log_id);
            crate::exec::ensure_world_readable_dir(&out.dir)
                .with_context(|| format!("failed to create {}", out.dir.display()))?;
            out
        }
    };
    let result = execute_in(cx, item, runnable, &out, waited_for, recovery).await;
    if let Err(e) = &result {
        match journal::read(&out.dir) {
            // The container ran: the journal stays so the next pass can read its outcome.
            Some(mut rec) if rec.phase != Phase::Starting => {
                if matches!(e, RunFailure::Docker(_)) {
                    rec.phase = Phase::EngineLost;
                    let _ = journal::write(&out.dir, &rec);
                }
            }
            Some(rec) => {
                crate::secrets::unstage(cx.secrets.dir(), &rec.container);
                let _ = std::fs::remove_dir_all(&out.dir);
            }
            None => {
                let _ = std::fs::remove_dir_all(&out.dir);
            }
        }
    }
    result
}

async fn execute_in(
    cx: &PassContext,
    item: &WorkItem,
    runnable: &Runnable,
    out: &ResultDir,
    waited_for: Option<String>,
    recovery: Option<Recovery>,
) -> Result<Finished, RunFailure> {
    let request = &runnable.request;
    let kind = request.kind.as_str();
    // Whether an earlier process began the log, and where the container's output in it
    // stops: the engine replays a followed container from there.
    let logged_until = RunLog::last_ts_ms(&out.log()).unwrap_or(0);
    let output_until = RunLog::last_output_ts_ms(&out.log()).unwrap_or(0);
    let mut log = match recovery {
        None => RunLog::create(&out.log(), &item.log_id)?,
        Some(_) => RunLog::append(&out.log(), &item.log_id)?,
    };
    let mut attempt = 1;
    let mut follow = None;
    // A log begins with the request, whichever process begins it.
    if logged_until == 0 {
        log.event(
            "received",
            json!({"file": item.file, "commit": item.commit}),
        )?;
        log.event(
            "validated",
            json!({"kind": kind, "resource": runnable.resource, "timeout_ms": runnable.timeout.as_millis() as u64}),
        )?;
    }
    match recovery {
        None => {}
        Some(Recovery::Start { attempt: a }) => {
            attempt = a;
            log.event(
                "restarted",
                json!({"attempt": a, "note": "the runner stopped before the container started; starting it now"}),
            )?;
        }
        Some(Recovery::Rerun { attempt: a, why }) => {
            attempt = a;
            log.event(
                "interrupted",
                json!({"attempt": a - 1, "reason": why, "policy": "rerun", "next_attempt": a}),
            )?;
        }
        Some(Recovery::Record { attempt: a, why }) => {
            log.event(
                "interrupted",
                json!({"attempt": a, "reason": why, "policy": "record"}),
            )?;
            let reason = format!("interrupted: {why}");
            log.event(
                "finished",
                json!({"state": "interrupted", "reason": reason}),
            )?;
            let mut status = unstarted(
                cx,
                item,
                kind,
                State::Interrupted,
                reason,
                Some(runnable.resource.clone()),
            );
            status.attempt = a;
            if let Some(rec) = journal::read(&out.dir) {
                status.started_at = rec.started_at;
                status.image = Some(rec.image);
                if let Ok(docker) = cx.executor() {
                    docker.remove(&rec.container).await;
                }
            }
            write_status(&out.status(), &status)?;
            return Ok(Finished {
                status,
                dir: out.dir.clone(),
            });
        }
        Some(Recovery::Follow(rec)) => {
            attempt = rec.attempt;
            log.event(
                "reattached",
                json!({"attempt": rec.attempt, "container": rec.container, "note": "the runner restarted while the handler ran; its output since the last line above comes from the engine's log"}),
            )?;
            follow = Some(rec);
        }
        Some(Recovery::Busy) => {
            return Err(RunFailure::Other(anyhow::anyhow!(
                "a live runner process owns this request's container"
            )))
        }
    }
    if let Some(holder) = waited_for {
        log.event("waited_for_lock", json!({"resource": holder}))?;
    }
    let reject = |log: &mut RunLog, reason: String| -> Result<Finished, RunFailure> {
        log.event("rejected", json!({"reason": reason}))?;
        log.event("finished", json!({"state": "rejected", "reason": reason}))?;
        let mut status = unstarted(
            cx,
            item,
            kind,
            State::Rejected,
            reason,
            Some(runnable.resource.clone()),
        );
        status.attempt = attempt;
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
    let repo_dir = cx.checkout(commit, handler.checkout).await?;
    let image = match &follow {
        Some(rec) => Ok(rec.image.clone()),
        None => resolve_image(cx, commit, handler, &repo_dir).await,
    };
    let image = match image {
        Ok(i) => i,
        Err(ExecError::ImageUnavailable(reason)) => return reject(&mut log, reason),
        Err(ExecError::Engine(e)) => return Err(RunFailure::Docker(e)),
    };
    let request_json = out.dir.join("request.json");
    // A followed container has the request mounted: it is not rewritten under its feet.
    if follow.is_none() {
        let mut doc = request.document.clone();
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("id".into(), json!(request.id.as_str()));
            obj.insert("file".into(), json!(item.file));
            obj.insert("commit".into(), json!(item.commit));
            obj.insert("resource".into(), json!(runnable.resource));
        }
        std::fs::write(&request_json, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("failed to write {}", request_json.display()))?;
    }
    // The handler's secrets, for a container about to be created (a followed one has them).
    let mut secret_env = Vec::new();
    let mut secret_files = Vec::new();
    if follow.is_none() {
        for (name, how) in &handler.secrets {
            let value = match cx.secrets.value(name) {
                Ok(v) => v,
                Err(msg) => return reject(&mut log, format!("handler `{kind}` needs {msg}")),
            };
            match how {
                SecretDelivery::Env => {
                    let v = value.strip_suffix('\n').unwrap_or(&value);
                    let v = v.strip_suffix('\r').unwrap_or(v);
                    secret_env.push((name.clone(), v.to_string()));
                }
                SecretDelivery::File => secret_files.push((name.clone(), value)),
            }
        }
    }
    let name = container_name(&cx.runner, &cx.scope, request.id.as_str(), attempt);
    let staged =
        (!secret_files.is_empty()).then(|| crate::secrets::staged_path(cx.secrets.dir(), &name));
    let ctx = RunContext {
        runner: cx.runner.clone(),
        request_id: request.id.to_string(),
        scope: cx.scope.clone(),
        attempt,
        commit: item.commit.clone(),
        image: image.clone(),
        repo_dir,
        request_json,
        timeout: runnable.timeout,
        params: request.params.clone(),
        secret_env,
        secret_files: staged,
    };
    let spec = match container_spec(handler, &ctx, &cx.limits) {
        Ok(s) => s,
        Err(reason) => return reject(&mut log, reason),
    };
    let docker = cx.executor().map_err(RunFailure::Docker)?;
    if !secret_files.is_empty() {
        let staged = crate::secrets::stage(
            cx.secrets.dir(),
            &spec.name,
            &secret_files,
            &handler.limits.user,
        );
        if let Err(e) = staged {
            return reject(&mut log, format!("{e:#}"));
        }
    }
    // Journal the attempt before its container exists, so a process that dies from here on
    // leaves a record of what it was about to run.
    let (container, started_at, started_ms, fresh) = match &follow {
        Some(rec) => {
            let started_ms = if rec.started_ms == 0 {
                unix_ms()
            } else {
                rec.started_ms
            };
            let started_at = rec.started_at.clone().unwrap_or_else(now);
            (rec.container.clone(), started_at, started_ms, None)
        }
        None => {
            let rec = AttemptRecord {
                attempt,
                container: spec.name.clone(),
                phase: Phase::Starting,
                started_at: None,
                started_ms: 0,
                image: image.clone(),
            };
            if let Err(e) = journal::write(&out.dir, &rec) {
                crate::secrets::unstage(cx.secrets.dir(), &spec.name);
                return Err(e.into());
            }
            crate::crashpoint::hit("before-start");
            let started_at = now();
            log.event(
                "started",
                json!({"container": spec.name, "image": image, "attempt": attempt, "user": spec.user, "network": spec.network}),
            )?;
            let rec = AttemptRecord {
                phase: Phase::Started,
                started_at: Some(started_at.clone()),
                started_ms: unix_ms(),
                ..rec
            };
            (spec.name.clone(), started_at, rec.started_ms, Some(rec))
        }
    };
    cx.check(super::checks::CheckEvent::Started {
        id: item.log_id.clone(),
        commit: item.commit.clone(),
        started_at: started_at.clone(),
    });
    let mut write_error: Option<anyhow::Error> = None;
    // The cap holds for output as committed in the log (JSON around each line included),
    // not only for the handler's raw bytes, which the executor caps too. A followed
    // container's log counts whole.
    let cap = spec.output_cap;
    let mut capped = false;
    let mut logged = if fresh.is_some() { 0 } else { log.len() };
    let mut on_output = |event| {
        let r = match event {
            OutputEvent::Line(..) | OutputEvent::Truncated { .. } if capped => Ok(()),
            OutputEvent::Line(stream, line) if logged < cap => {
                let before = log.len();
                let r = log.event("output", json!({"stream": stream.as_str(), "line": line}));
                logged += log.len() - before;
                r
            }
            OutputEvent::Line(..) | OutputEvent::Truncated { .. } => {
                capped = true;
                log.event(
                    "output_truncated",
                    json!({"cap_bytes": cap, "note": "output past the cap was dropped"}),
                )
            }
        };
        if let (Err(e), None) = (r, &write_error) {
            write_error = Some(e);
        }
    };
    let cancel = cx.shutdown.reached(super::shutdown::Stage::Cancel);
    let outcome = match fresh {
        None => {
            let ends_ms = started_ms.saturating_add(spec.timeout.as_millis() as u64);
            let remaining = Duration::from_millis(ends_ms.saturating_sub(unix_ms()));
            let logged = std::fs::metadata(out.log()).map_or(0, |m| m.len());
            let cap = spec.output_cap.saturating_sub(logged);
            let resume = crate::exec::Resume {
                name: container.clone(),
                after_ms: output_until,
                remaining,
                grace: spec.grace,
                cap,
            };
            docker
                .resume(&resume, &mut on_output, Box::pin(cancel))
                .await
        }
        Some(rec) => {
            let mut journaled = Ok(());
            let mut on_started = || {
                journaled = journal::write(&out.dir, &rec);
                crate::crashpoint::hit("running");
            };
            let outcome = docker
                .run(&spec, &mut on_started, &mut on_output, Box::pin(cancel))
                .await;
            journaled?;
            outcome
        }
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(ExecError::ImageUnavailable(reason)) => return reject(&mut log, reason),
        Err(ExecError::Engine(e)) => return Err(RunFailure::Docker(e)),
    };
    crate::crashpoint::hit("after-exit");
    if let Some(e) = write_error {
        return Err(RunFailure::Other(
            e.context("failed to stream output to the run log"),
        ));
    }
    let duration_ms = unix_ms().saturating_sub(started_ms);
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
        attempt,
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
    // Recorded: the container has told all it can. Removed while the next request of the
    // queue starts; the pass waits for every removal before it ends.
    let (docker, lifecycle, secrets) = (
        docker.clone(),
        cx.lifecycle.clone(),
        cx.secrets.dir().to_path_buf(),
    );
    let phases = outcome.phases;
    let removal = tokio::spawn(async move {
        let removing = std::time::Instant::now();
        docker.remove(&container).await;
        crate::secrets::unstage(&secrets, &container);
        if phases.create > 0 {
            if let Ok(mut all) = lifecycle.lock() {
                all.push(crate::exec::Phases {
                    remove: crate::exec::us_since(removing),
                    ..phases
                });
            }
        }
    });
    if let Ok(mut removals) = cx.removals.lock() {
        removals.push(removal);
    }
    Ok(Finished {
        status,
        dir: out.dir.clone(),
    })
}

/// The image a handler runs in: its reference (pulled if missing) or its `build:` context
/// at `commit`, built once.
async fn resolve_image(
    cx: &PassContext,
    commit: crate::git::Oid,
    handler: &crate::contract::handlers::HandlerSpec,
    repo_dir: &Path,
) -> Result<String, ExecError> {
    let known = |name: &str| cx.images.lock().is_ok_and(|seen| seen.contains(name));
    let remember = |name: &str| {
        if let Ok(mut seen) = cx.images.lock() {
            seen.insert(name.to_string());
        }
    };
    match &handler.image {
        ImageSource::Reference(r) => {
            if !known(r) {
                cx.executor()?.ensure_image(r).await?;
                remember(r);
            }
            Ok(r.clone())
        }
        ImageSource::Build(dir) => {
            let tree = cx.object_id(commit, &format!("containers/{dir}")).await?;
            let tag = format!("codex-runner-build/{dir}:{}", &tree[..12.min(tree.len())]);
            if known(&tag) {
                return Ok(tag);
            }
            let context = repo_dir.join("containers").join(dir);
            let _one_build = cx.builds.lock().await;
            cx.executor()?.ensure_built(&tag, &context).await?;
            remember(&tag);
            Ok(tag)
        }
    }
}
