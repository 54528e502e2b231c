//! The driver of one request: prepare, start or follow, stream, conclude. It reports each
//! step to the [`lifecycle`](super::lifecycle) and does the effects it asks for; it decides
//! no state itself.

use std::sync::Mutex;
use std::time::Duration;

use crate::contract::Violation;
use crate::exec::spec::ContainerSpec;
use crate::exec::{ExecError, OutputEvent, RunOutcome};
use crate::plan::{Runnable, WorkItem};
use crate::record::{now, unix_ms, write_status, LogEvent, ResultDir, RunLog, Status};

use super::context::{Finished, PassContext};
use super::journal::{self, AttemptRecord, Phase, Recovery};
use super::lifecycle::{self, CheckStage, Count, Effect, Ending, Transition};
use super::prepare::{prepare, resolve_image, Prepared};
use super::report::DispatchError;

/// One attempt being driven: where its result goes, its log, and its journal record once it
/// has one. Shared by the output and start callbacks, hence the locks (never contended).
struct Attempt<'a> {
    cx: &'a PassContext,
    item: &'a WorkItem,
    out: &'a ResultDir,
    log: Mutex<RunLog>,
    /// The attempt number.
    number: u32,
    /// Kind and resource, once the request was routed.
    routed: Option<&'a Runnable>,
    record: Mutex<Option<AttemptRecord>>,
    /// When its container started (this process's or an earlier one's).
    started: Option<(String, u64)>,
    image: Option<String>,
    /// When this process asked the executor to start its container.
    launched: Option<std::time::Instant>,
    /// Counted as running while its container runs.
    running: Mutex<Option<crate::metrics::Running>>,
}

/// What the end of an attempt adds to its status.
#[derive(Default)]
struct Ran {
    exit_code: Option<i64>,
    duration_ms: Option<u64>,
}

impl<'a> Attempt<'a> {
    /// Do what `transition` asks for.
    fn go(&self, transition: Transition<'_>) -> anyhow::Result<()> {
        for effect in lifecycle::effects(&transition) {
            match effect {
                Effect::Log(event) => self
                    .log
                    .lock()
                    .map_err(|_| anyhow::anyhow!("run log lock poisoned"))?
                    .write(&event)?,
                Effect::Journal(phase) => {
                    let mut record = self
                        .record
                        .lock()
                        .map_err(|_| anyhow::anyhow!("journal lock poisoned"))?;
                    let Some(record) = record.as_mut() else {
                        anyhow::bail!("no attempt to journal at {phase:?}");
                    };
                    record.phase = phase;
                    journal::write(self.out, record)?;
                }
                Effect::Check(stage) => {
                    let started_at = self.started.as_ref().map(|s| s.0.as_str());
                    check(self.cx, self.item, self.kind(), stage, started_at);
                }
                // The driver writes it in `end`, which alone holds what it says.
                Effect::Status => {}
                Effect::Count(count) => self.count(count),
            }
        }
        Ok(())
    }

    /// Count `count` in the pass's metrics.
    fn count(&self, count: Count) {
        let metrics = &self.cx.metrics;
        match count {
            Count::LockWaited => metrics.lock_waited(),
            Count::Started | Count::Resumed => {
                if let (Count::Started, Some(launched)) = (count, self.launched) {
                    metrics.started(self.cx.found_at.elapsed(), launched.elapsed());
                }
                if let Ok(mut running) = self.running.lock() {
                    *running = Some(metrics.running());
                }
            }
            Count::Ended(state, ran_ms) => {
                if let Ok(mut running) = self.running.lock() {
                    running.take();
                }
                metrics.ended(self.kind(), state, ran_ms.map(Duration::from_millis));
            }
        }
    }

    fn kind(&self) -> &str {
        self.routed.map_or("", |r| r.request.kind.as_str())
    }

    /// Take over a container an earlier process started: its name.
    fn follow(&mut self, rec: &AttemptRecord) -> anyhow::Result<String> {
        let started_ms = if rec.started_ms == 0 {
            unix_ms()
        } else {
            rec.started_ms
        };
        self.started = Some((rec.started_at.clone().unwrap_or_else(now), started_ms));
        self.go(Transition::Followed)?;
        Ok(rec.container.clone())
    }

    /// Journal the attempt before its container exists, so a process that dies from here on
    /// leaves a record of what it was about to run; then log the start. The container's name.
    fn launch(&mut self, spec: &ContainerSpec, image: &str) -> Result<String, DispatchError> {
        *self
            .record
            .lock()
            .map_err(|_| anyhow::anyhow!("journal lock poisoned"))? = Some(AttemptRecord {
            attempt: self.number,
            container: spec.name.clone(),
            phase: Phase::Starting,
            started_at: None,
            started_ms: 0,
            image: image.to_string(),
        });
        self.launched = Some(std::time::Instant::now());
        if let Err(e) = self.go(Transition::Starting) {
            crate::secrets::unstage(self.cx.secrets.dir(), &spec.name);
            return Err(e.into());
        }
        crate::crashpoint::hit("before-start");
        let started = (now(), unix_ms());
        if let Ok(mut record) = self.record.lock() {
            if let Some(record) = record.as_mut() {
                record.started_at = Some(started.0.clone());
                record.started_ms = started.1;
            }
        }
        self.started = Some(started);
        tracing::info!(container = %spec.name, image, attempt = self.number, "starting the handler");
        self.go(Transition::Launched {
            container: &spec.name,
            image,
            attempt: self.number,
            user: &spec.user,
            network: &spec.network,
        })?;
        Ok(spec.name.clone())
    }

    /// End the attempt: conclude, close the log, write the status.
    fn end(self, ending: Ending<'_>, ran: Ran) -> Result<Finished, DispatchError> {
        let verdict = lifecycle::conclude(&ending);
        tracing::info!(
            state = verdict.state.as_str(),
            reason = verdict.reason.as_deref().unwrap_or(""),
            "recorded"
        );
        self.go(Transition::Ended {
            ending,
            verdict: &verdict,
            duration_ms: ran.duration_ms,
        })?;
        let status = Status {
            id: self.item.log_id.clone(),
            kind: self.kind().to_string(),
            state: verdict.state,
            exit_code: ran.exit_code,
            reason: verdict.reason,
            attempt: self.number,
            started_at: self.started.map(|s| s.0),
            finished_at: now(),
            duration_ms: ran.duration_ms.unwrap_or(0),
            runner: self.cx.runner.clone(),
            commit: self.item.commit,
            image: self.image,
            file: self.item.file.clone(),
            resource: self.routed.map(|r| r.resource.clone()),
        };
        write_status(&self.out.status(), &status)?;
        Ok(Finished {
            status,
            files: self.out.clone(),
        })
    }
}

/// Record a request the planner refused.
pub(crate) fn record_rejection(
    cx: &PassContext,
    item: &WorkItem,
    violations: &[Violation],
) -> Result<Finished, DispatchError> {
    let out = ResultDir::fresh(&cx.results_dir, &item.log_id)?;
    let attempt = Attempt {
        cx,
        item,
        out: &out,
        log: Mutex::new(RunLog::create(&out.log(), &item.log_id)?),
        number: 1,
        routed: None,
        record: Mutex::new(None),
        started: None,
        image: None,
        launched: None,
        running: Mutex::new(None),
    };
    attempt.go(Transition::Admitted {
        file: &item.file,
        commit: item.commit,
        routed: None,
    })?;
    attempt.end(Ending::Refused(violations), Ran::default())
}

/// The queued request's check run, before it has a log.
pub(crate) fn queued(cx: &PassContext, item: &WorkItem, runnable: &Runnable) {
    for effect in lifecycle::effects(&Transition::Queued) {
        if let Effect::Check(stage) = effect {
            check(cx, item, &runnable.request.kind, stage, None);
        }
    }
}

/// Move `item`'s check run to `stage` (when a forge is configured).
fn check(
    cx: &PassContext,
    item: &WorkItem,
    kind: &str,
    stage: CheckStage,
    started_at: Option<&str>,
) {
    cx.check(match stage {
        CheckStage::Queued => super::checks::CheckEvent::Queued {
            id: item.log_id.clone(),
            commit: item.commit,
            file: item.file.clone(),
            kind: kind.to_string(),
        },
        CheckStage::InProgress => super::checks::CheckEvent::Started {
            id: item.log_id.clone(),
            commit: item.commit,
            started_at: started_at.map_or_else(now, str::to_string),
        },
    });
}

/// Forget this runner's unfinished attempt at `id` (another runner has the request): its
/// container, if one is left, and its journal.
pub(crate) async fn abandon(cx: &PassContext, id: &str) {
    let files = ResultDir::of(&cx.results_dir, id);
    if let Some(rec) = journal::read(&files) {
        tracing::warn!(id, container = %rec.container, "another runner has this request: dropping this runner's unfinished attempt");
        if let Ok(executor) = cx.executor() {
            executor.remove(&rec.container).await;
        }
        let _ = std::fs::remove_dir_all(&files.dir);
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
) -> Result<Finished, DispatchError> {
    let out = match recovery {
        None => ResultDir::fresh(&cx.results_dir, &item.log_id)?,
        // Go on in the directory an earlier process left (a takeover starts one).
        Some(_) => {
            let out = ResultDir::of(&cx.results_dir, &item.log_id);
            out.ensure()?;
            out
        }
    };
    let result = drive(cx, item, runnable, &out, waited_for, recovery).await;
    if let Err(e) = &result {
        match journal::read(&out) {
            // The container ran: the journal stays so the next pass can read its outcome.
            Some(mut rec) if rec.phase != Phase::Starting => {
                if matches!(e, DispatchError::Docker(_)) {
                    for effect in lifecycle::effects(&Transition::EngineLost) {
                        if let Effect::Journal(phase) = effect {
                            rec.phase = phase;
                            let _ = journal::write(&out, &rec);
                        }
                    }
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

/// prepare → start or follow → stream → conclude.
async fn drive(
    cx: &PassContext,
    item: &WorkItem,
    runnable: &Runnable,
    out: &ResultDir,
    waited_for: Option<String>,
    recovery: Option<Recovery>,
) -> Result<Finished, DispatchError> {
    // Whether an earlier process began the log, and where the container's output in it
    // stops: the engine replays a followed container from there.
    let logged_until = RunLog::last_ts_ms(&out.log()).unwrap_or(0);
    let output_until = RunLog::last_output_ts_ms(&out.log()).unwrap_or(0);
    let log = match recovery {
        None => RunLog::create(&out.log(), &item.log_id)?,
        Some(_) => RunLog::append(&out.log(), &item.log_id)?,
    };
    let follow = match &recovery {
        Some(Recovery::Follow(rec)) => Some(rec.clone()),
        _ => None,
    };
    let mut attempt = Attempt {
        cx,
        item,
        out,
        log: Mutex::new(log),
        number: lifecycle::attempt_of(recovery.as_ref()),
        routed: Some(runnable),
        record: Mutex::new(None),
        started: None,
        image: None,
        launched: None,
        running: Mutex::new(None),
    };
    // A log begins with the request, whichever process begins it.
    if logged_until == 0 {
        attempt.go(Transition::Admitted {
            file: &item.file,
            commit: item.commit,
            routed: Some((&runnable.request.kind, &runnable.resource, runnable.timeout)),
        })?;
    }
    if let Some(recovery) = &recovery {
        attempt.go(Transition::Resumed(recovery))?;
        match recovery {
            Recovery::Record { why, .. } => {
                if let Some(rec) = journal::read(out) {
                    attempt.started = rec.started_at.map(|at| (at, rec.started_ms));
                    attempt.image = Some(rec.image);
                    if let Ok(executor) = cx.executor() {
                        executor.remove(&rec.container).await;
                    }
                }
                return attempt.end(Ending::Interrupted(why), Ran::default());
            }
            Recovery::Busy => {
                return Err(DispatchError::Other(anyhow::anyhow!(
                    "a live runner process owns this request's container"
                )))
            }
            Recovery::Start { .. } | Recovery::Rerun { .. } | Recovery::Follow(_) => {}
        }
    }
    if let Some(resource) = &waited_for {
        attempt.go(Transition::WaitedForLock(resource))?;
    }
    let handler = &runnable.handler;
    let commit = item.commit;
    let repo_dir = cx.checkout(commit, handler.checkout).await?;
    let image = match &follow {
        Some(rec) => Ok(rec.image.clone()),
        None => resolve_image(cx, commit, handler, &repo_dir).await,
    };
    let image = match image {
        Ok(i) => i,
        Err(ExecError::ImageUnavailable(reason) | ExecError::Unstartable(reason)) => {
            return attempt.end(Ending::Unstartable(&reason), Ran::default())
        }
        Err(ExecError::Engine(e)) => return Err(DispatchError::Docker(e)),
    };
    let prepared = prepare(
        cx,
        item,
        runnable,
        out,
        &image,
        repo_dir,
        attempt.number,
        follow.is_some(),
    )?;
    let (spec, secret_files) = match prepared {
        Prepared::Ready { spec, secret_files } => (spec, secret_files),
        Prepared::Unstartable(reason) => {
            return attempt.end(Ending::Unstartable(&reason), Ran::default())
        }
    };
    let executor = cx.executor().map_err(DispatchError::Docker)?;
    if !secret_files.is_empty() {
        let staged = crate::secrets::stage(
            cx.secrets.dir(),
            &spec.name,
            &secret_files,
            &handler.limits.user,
        );
        if let Err(e) = staged {
            return attempt.end(Ending::Unstartable(&format!("{e:#}")), Ran::default());
        }
    }
    let container = match &follow {
        Some(rec) => attempt.follow(rec)?,
        None => attempt.launch(&spec, &image)?,
    };
    attempt.image = Some(image);
    let followed = follow.as_ref().map(|_| (container.as_str(), output_until));
    let outcome = match stream(&attempt, executor.as_ref(), &spec, followed).await? {
        Streamed::Exited(o) => o,
        Streamed::Unstartable(reason) => {
            return attempt.end(Ending::Unstartable(&reason), Ran::default())
        }
    };
    crate::crashpoint::hit("after-exit");
    let started_ms = attempt.started.as_ref().map_or(0, |s| s.1);
    let ran = Ran {
        exit_code: outcome.exit_code,
        duration_ms: Some(unix_ms().saturating_sub(started_ms)),
    };
    let finished = attempt.end(
        Ending::Ran {
            outcome: &outcome,
            timeout: runnable.timeout,
        },
        ran,
    )?;
    // Recorded: the container has told all it can.
    cx.remove_later(executor, container, outcome.phases);
    Ok(finished)
}

/// What became of a container the driver started or followed.
enum Streamed {
    /// It ran and exited (or was stopped).
    Exited(RunOutcome),
    /// The executor could not run it (its image is unavailable): why.
    Unstartable(String),
}

/// Start the container, or follow the one an earlier process started (`followed`: its name,
/// and where its output in the log stops), and stream its output into the log within the
/// output cap.
async fn stream(
    attempt: &Attempt<'_>,
    executor: &dyn crate::exec::Executor,
    spec: &ContainerSpec,
    followed: Option<(&str, u64)>,
) -> Result<Streamed, DispatchError> {
    let mut write_error: Option<anyhow::Error> = None;
    // The cap holds for output as committed in the log (JSON around each line included),
    // not only for the handler's raw bytes, which the executor caps too. A followed
    // container's log counts whole.
    let cap = spec.output_cap;
    let mut capped = false;
    let log_len = || attempt.log.lock().map_or(0, |l| l.len());
    let mut logged = if followed.is_some() { log_len() } else { 0 };
    let mut on_output = |event| {
        let line = match event {
            OutputEvent::Line(..) | OutputEvent::Truncated { .. } if capped => return,
            OutputEvent::Line(stream, line) if logged < cap => Some(LogEvent::Output {
                stream: stream.as_str().to_string(),
                line,
            }),
            OutputEvent::Line(..) | OutputEvent::Truncated { .. } => {
                capped = true;
                None
            }
        };
        let r = match attempt.log.lock() {
            Ok(mut log) => {
                let before = log.len();
                let r = log.write(&line.unwrap_or(LogEvent::OutputTruncated {
                    cap_bytes: cap,
                    note: "output past the cap was dropped".into(),
                }));
                logged += log.len() - before;
                r
            }
            Err(_) => Err(anyhow::anyhow!("run log lock poisoned")),
        };
        if let (Err(e), None) = (r, &write_error) {
            write_error = Some(e);
        }
    };
    let cancel = Box::pin(attempt.cx.shutdown.reached(super::shutdown::Stage::Cancel));
    let outcome = if let Some((container, output_until)) = followed {
        let started_ms = attempt.started.as_ref().map_or(0, |s| s.1);
        let ends_ms = started_ms.saturating_add(spec.timeout.as_millis() as u64);
        let logged = std::fs::metadata(attempt.out.log()).map_or(0, |m| m.len());
        let resume = crate::exec::Resume {
            name: container.to_string(),
            after_ms: output_until,
            remaining: Duration::from_millis(ends_ms.saturating_sub(unix_ms())),
            grace: spec.grace,
            cap: spec.output_cap.saturating_sub(logged),
        };
        executor.resume(&resume, &mut on_output, cancel).await
    } else {
        let mut journaled = Ok(());
        let mut on_started = || {
            journaled = attempt.go(Transition::Running);
            crate::crashpoint::hit("running");
        };
        let outcome = executor
            .run(spec, &mut on_started, &mut on_output, cancel)
            .await;
        journaled?;
        outcome
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(ExecError::ImageUnavailable(reason) | ExecError::Unstartable(reason)) => {
            return Ok(Streamed::Unstartable(reason))
        }
        Err(ExecError::Engine(e)) => return Err(DispatchError::Docker(e)),
    };
    if let Some(e) = write_error {
        return Err(DispatchError::Other(
            e.context("failed to stream output to the run log"),
        ));
    }
    Ok(Streamed::Exited(outcome))
}
