//! The dispatcher: one pass from the branch tip to published results.
//!
//! survey → recover → (per resource, in merge order) lock → claim → run → record → publish.
//! Each request moves through one [`lifecycle`]; `exec`, `git`, `record` and `forge` do the
//! I/O it asks for. This file holds the pass itself; each step has a module of its own.

mod checks;
mod claims;
mod context;
mod journal;
mod lifecycle;
pub mod locks;
mod prepare;
mod publish;
mod pulls;
mod queue;
mod recover;
mod report;
mod run;
pub mod shutdown;
mod survey;
#[cfg(test)]
mod tests;

pub use checks::{validation_update, ForgeTarget};
pub use pulls::{validate_local, validate_pull, PullJob, PullVerdict};
pub use report::{DispatchError, DispatchOptions, EngineTimes, PassReport};

use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::commit::CommitId;
use crate::contract::repo_config::RepoConfig;
use crate::git::{Checkouts, Mirror};
use crate::plan::{self, Action, WorkItem};
use crate::record::{Ledger, ResultFile, Status};

pub(crate) use context::git_token;
use context::{Connection, Finished, PassContext, SharedMirror};
use queue::run_queues;
use recover::{reap_orphans, recover};
use survey::{git, recorded, resolve_branch, survey, Survey};

use locks::ResourceLocks;
use publish::{Committed, Target};

/// Drop `refs`, claims a daemon's passes kept ([`PassReport::kept_claims`]), in one push: after
/// a quiet spell with no pass to carry them, or when the daemon stops. A failure only leaves
/// them for a later pass's sweep.
pub async fn release_claims(opts: &DispatchOptions, refs: Vec<String>) {
    if refs.is_empty() {
        return;
    }
    let work = opts.work_dir.join(remote_key(&opts.remote));
    let remote = opts.remote.clone();
    let attempts = opts.push_attempts;
    let dropped = match git_token(opts.git_auth.as_ref()).await {
        Ok(token) => tokio::task::spawn_blocking(move || {
            let mut mirror = Mirror::open(&work, &remote, token.as_deref())?;
            mirror.set_attempts(attempts);
            mirror.drop_claims(&refs)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = dropped {
        tracing::warn!(error = %format!("{e:#}"), "failed to drop claims; a later pass drops them");
    }
}

/// Run one full pass against the remote, counted in the metrics.
pub async fn dispatch_once(opts: &DispatchOptions) -> Result<PassReport, DispatchError> {
    let result = pass(opts).await;
    let held = backlog(&opts.state_dir, &opts.remote);
    let pending = held.results + held.attempts;
    opts.metrics.pending_check_updates(held.check_updates);
    match &result {
        Ok(r) => opts.metrics.pass_ended(
            crate::metrics::PassOutcome::ok,
            r.published.len() as u64,
            r.published.iter().map(|p| u64::from(p.replays)).sum(),
            pending,
        ),
        Err(_) => opts
            .metrics
            .pass_ended(crate::metrics::PassOutcome::failed, 0, 0, pending),
    }
    result
}

async fn pass(opts: &DispatchOptions) -> Result<PassReport, DispatchError> {
    let before = crate::git::round_trips();
    // Results wait per remote: runners of several repositories may share one state dir.
    let key = remote_key(&opts.remote);
    let results_dir = results_dir(&opts.state_dir, &key);
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("failed to create state dir {}", results_dir.display()))?;
    let locks = ResourceLocks::new(&opts.state_dir.join("locks"))?;
    // One mirror per remote, and checkouts per process: runners of other repositories, or
    // other runner processes, may share the work dir.
    let work = opts.work_dir.join(&key);
    let token = git_token(opts.git_auth.as_ref()).await?;
    let mut mirror = git(Mirror::open(&work, &opts.remote, token.as_deref()))?;
    mirror.set_attempts(opts.push_attempts);
    mirror.set_shallow(true);
    let (branch, tip, config) = resolve_branch(&mirror, opts)?;
    tracing::info!(branch = %branch, tip = %tip, "planning pass");
    let Survey {
        pending,
        leftovers,
        mut planned,
    } = survey(&mut mirror, &branch, tip, &config, &results_dir)?;
    let executor = Connection::new(opts.executor.clone());
    let recovered = recover(leftovers, &planned, &config, &executor).await?;
    reap_orphans(opts, &executor, &recovered.followed).await;
    planned
        .items
        .retain(|item| !recovered.busy.contains(&item.log_id));
    leave_for_other_runners(&mut planned, &opts.labels);
    let (checks_tx, reporter) = check_reporter(opts, &key, &mirror, tip, &config);
    let mirror = SharedMirror::new(mirror, opts.git_auth.clone());
    let claims = claims::Claims {
        mirror: mirror.clone(),
        branch: branch.clone(),
        me: claims::Holder {
            runner: opts.runner.clone(),
            host: crate::config::host_name(),
            boot: crate::exec::boot_id(),
            pid: std::process::id(),
            state: format!("{:016x}", fnv1a(&results_dir.to_string_lossy())),
        },
        identity: opts.identity.clone(),
        config: config.clone(),
        stale: Default::default(),
    };
    {
        let config = config.clone();
        claims
            .sweep(move |m, id| recorded(m, tip, &config, id))
            .await;
    }
    let cx = Arc::new(PassContext {
        runner: opts.runner.clone(),
        // The tail of the remote key: the repository's name and 8 hex digits of its hash.
        scope: key.rsplit_once('-').map_or(key.clone(), |(name, hash)| {
            format!("{name}-{}", &hash[..8.min(hash.len())])
        }),
        results_dir,
        limits: opts.limits.clone(),
        secrets: opts.secrets.clone(),
        mirror: mirror.clone(),
        checkouts: tokio::sync::Mutex::new(Checkouts::new(&work, &recovered.mounted)?),
        executor,
        builds: tokio::sync::Mutex::new(()),
        images: Mutex::new(Default::default()),
        phases: Default::default(),
        removals: Mutex::new(Vec::new()),
        checks: checks_tx.clone(),
        shutdown: opts.shutdown.clone(),
        recoveries: Mutex::new(recovered.plans),
        claims: claims.clone(),
        deferred: Mutex::new(Vec::new()),
        config: config.clone(),
        metrics: opts.metrics.clone(),
        found_at: std::time::Instant::now(),
    });
    let target = Target {
        mirror,
        branch: branch.clone(),
        config,
        identity: opts.identity.clone(),
        runner: opts.runner.clone(),
        attempts: opts.push_attempts,
        checks: checks_tx,
        claims: claims.clone(),
        keep_recorded_claims: opts.keep_recorded_claims,
    };
    let release = claims;
    let (tx, rx) = mpsc::unbounded_channel::<Finished>();
    let committer = tokio::spawn(publish::committer(target, rx));
    let recorded = Arc::new(Mutex::new(Vec::<Status>::new()));
    let record = {
        let recorded = recorded.clone();
        move |f: Finished| {
            if let Ok(mut r) = recorded.lock() {
                r.push(f.status.clone());
            }
            let _ = tx.send(f);
        }
    };

    let queues = enqueue(&cx, pending, planned.items, &record)?;
    let infra = run_queues(&cx, queues, &locks, opts.concurrency, record).await;
    cx.wind_down().await;
    let Committed {
        published,
        errors: publish_errors,
        kept: kept_claims,
    } = committer.await.context("failed to join the committer")?;
    let deferred = cx.deferred.lock().map(|d| d.clone()).unwrap_or_default();
    let lifecycle = cx
        .phases
        .lock()
        .map(|all| EngineTimes::of(&all))
        .unwrap_or_default();
    let look_again = (!deferred.is_empty())
        .then(|| (cx.config.claim_timeout / 3).max(std::time::Duration::from_secs(1)));
    // Every sender is gone once the pass context is: the reporter sends what is left and ends.
    drop(cx);
    if let Some(task) = reporter {
        checks::drain(task).await;
    }
    let items = recorded.lock().map(|r| r.clone()).unwrap_or_default();
    let failed = match publish_errors.into_iter().next() {
        Some(e) => Some(DispatchError::Git(e)),
        None => infra,
    };
    if let Some(e) = failed {
        // A failed pass reports nothing for the daemon to drop later.
        release.drop_refs(kept_claims).await;
        return Err(e);
    }
    Ok(PassReport {
        branch,
        tip: Some(tip),
        items,
        ignored: planned.ignored,
        published,
        deferred,
        look_again,
        round_trips: crate::git::round_trips() - before,
        lifecycle,
        kept_claims,
    })
}

/// Leave alone the requests for other runners (a `runs-on` label this one does not carry):
/// not run, not rejected, not moved.
fn leave_for_other_runners(planned: &mut plan::Plan, labels: &[String]) {
    let mut ignored = Vec::new();
    planned.items.retain(|item| match &item.action {
        Action::Run(r) => match r.request.runs_on.iter().find(|l| !labels.contains(l)) {
            Some(missing) => {
                let why =
                    format!("runs-on needs label `{missing}`, which this runner does not carry");
                tracing::info!(file = %item.file, "left alone: {why}");
                ignored.push((item.file.clone(), why));
                false
            }
            None => true,
        },
        Action::Reject(_) => true,
    });
    planned.ignored.extend(ignored);
}

/// The pass's check-run sink and the task that sends what it records, when a forge is
/// configured. Completed states an earlier process held back until their push are released
/// if the push happened (the branch at `tip` has their results).
fn check_reporter(
    opts: &DispatchOptions,
    key: &str,
    mirror: &Mirror,
    tip: CommitId,
    config: &RepoConfig,
) -> (
    Option<checks::CheckSink>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let Some(target) = &opts.forge else {
        return (None, None);
    };
    let journal = Arc::new(checks::Journal::new(checks_dir(&opts.state_dir, key)));
    journal.release(|id| {
        Ledger::of(config)
            .lookups(ResultFile::Status, id)
            .iter()
            .any(|p| mirror.path_kind(tip, p).is_some())
    });
    let (sink, rx) = checks::CheckSink::new(journal.clone(), target.html_url.clone());
    (
        Some(sink),
        Some(tokio::spawn(checks::reporter(target.clone(), journal, rx))),
    )
}

/// Hand results an earlier pass executed but could not push to the committer (never run
/// again), record the requests the planner refused, and queue the rest by resource, each
/// queue in merge order.
fn enqueue(
    cx: &PassContext,
    pending: Vec<Finished>,
    items: Vec<WorkItem>,
    record: &impl Fn(Finished),
) -> Result<Vec<(String, Vec<WorkItem>)>, DispatchError> {
    let skip: Vec<String> = pending.iter().map(|f| f.status.id.clone()).collect();
    for f in pending {
        tracing::info!(id = %f.status.id, "publishing a result left by an earlier pass");
        record(f);
    }
    let mut queues: Vec<(String, Vec<WorkItem>)> = Vec::new();
    for item in items.into_iter().filter(|i| !skip.contains(&i.log_id)) {
        match &item.action {
            Action::Reject(v) => record(run::record_rejection(cx, &item, v)?),
            Action::Run(r) => {
                run::queued(cx, &item, r);
                let resource = r.resource.clone();
                match queues.iter_mut().find(|(res, _)| *res == resource) {
                    Some((_, q)) => q.push(item),
                    None => queues.push((resource, vec![item])),
                }
            }
        }
    }
    Ok(queues)
}

/// Where results for the remote of `key` wait in `state_dir`, a directory each: runners of
/// several repositories may share one state directory.
fn results_dir(state_dir: &std::path::Path, key: &str) -> std::path::PathBuf {
    state_dir.join("results").join(key)
}

/// Where check updates for the remote of `key` wait in `state_dir`, a file each.
fn checks_dir(state_dir: &std::path::Path, key: &str) -> std::path::PathBuf {
    state_dir.join("checks").join(key)
}

/// What a state directory holds for a remote and has not handed on yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Results recorded and not yet on the branch.
    pub results: usize,
    /// Attempts journaled without a result: running now, or left by a process that died.
    pub attempts: usize,
    /// Check-run or status updates the forge has not taken.
    pub check_updates: usize,
}

/// The [`Backlog`] in `state_dir` for `remote` (a directory per result or attempt, a file
/// per check update); zero for what does not exist.
pub fn backlog(state_dir: &std::path::Path, remote: &str) -> Backlog {
    let key = remote_key(remote);
    let mut held = Backlog::default();
    if let Ok(dirs) = std::fs::read_dir(results_dir(state_dir, &key)) {
        for d in dirs.flatten() {
            if crate::record::ResultDir::at(d.path()).status().exists() {
                held.results += 1;
            } else {
                held.attempts += 1;
            }
        }
    }
    held.check_updates = std::fs::read_dir(checks_dir(state_dir, &key)).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    });
    held
}

/// A directory name for a remote: readable tail plus a hash of the whole URL.
fn remote_key(remote: &str) -> String {
    let tail: String = remote
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(40)
        .collect();
    format!("{tail}-{:016x}", fnv1a(remote))
}

/// FNV-1a: a stable short hash for file names (not for security).
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
