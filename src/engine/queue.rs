//! Per-resource queues: each resource's requests in merge order, queues side by side up to
//! the concurrency; the lock, a slot and the queue's claims before each request starts.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::plan::{Action, WorkItem};

use super::context::{Finished, PassContext};
use super::locks::ResourceLocks;
use super::report::DispatchError;
use super::survey::recorded;
use super::{claims, journal, lifecycle, run, shutdown};

/// Run each resource's queue in order, queues side by side up to `concurrency`; the first
/// infrastructure failure, if any. Requests after a failure in the same queue wait for a
/// later pass.
pub(super) async fn run_queues(
    cx: &Arc<PassContext>,
    queues: Vec<(String, Vec<WorkItem>)>,
    locks: &ResourceLocks,
    concurrency: usize,
    record: impl Fn(Finished) + Clone + Send + Sync + 'static,
) -> Option<DispatchError> {
    if queues.is_empty() {
        return None;
    }
    if let Err(e) = cx.executor.get().await {
        return Some(DispatchError::Docker(e));
    }
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (resource, queue) in queues {
        let (cx, slots, locks, record) = (cx.clone(), slots.clone(), locks.clone(), record.clone());
        tasks.spawn(async move {
            // Taken together when the queue's first request gets its turn (a claim push and a
            // look at the tip for the whole queue, not for each request).
            let mut claims: Option<claims::QueueClaims> = None;
            let ran = run_queue(&cx, &resource, &queue, &slots, &locks, &record, &mut claims).await;
            if let Some(q) = claims {
                q.close().await;
            }
            ran
        });
    }
    let mut first = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => DispatchError::Other(anyhow::anyhow!("a request task panicked: {e}")),
        };
        tracing::error!(error = %failure, "a request queue stopped");
        first.get_or_insert(failure);
    }
    first
}

/// Run one resource's queue in order (see [`run_queues`]); `claims` holds the queue's claims
/// once taken, for the caller to close whatever way this ends.
pub(super) async fn run_queue(
    cx: &Arc<PassContext>,
    resource: &str,
    queue: &[WorkItem],
    slots: &Semaphore,
    locks: &ResourceLocks,
    record: &(impl Fn(Finished) + Clone + Send + Sync + 'static),
    claims: &mut Option<claims::QueueClaims>,
) -> Result<(), DispatchError> {
    let mut verdicts: std::collections::HashMap<String, claims::Claimed> = Default::default();
    let runnable = |item: &WorkItem| matches!(item.action, Action::Run(_));
    // Queued until its turn comes; those a failure leaves behind stop counting with the queue.
    let mut waiting = cx
        .metrics
        .waiting(queue.iter().filter(|i| runnable(i)).count());
    for (index, item) in queue.iter().enumerate() {
        let Action::Run(runnable) = &item.action else {
            continue;
        };
        waiting.leave();
        if cx.shutdown.stage() >= shutdown::Stage::Drain {
            tracing::info!(id = %item.log_id, "the runner is stopping: left for a later pass");
            continue;
        }
        let span = tracing::info_span!("request", id = %item.log_id, kind = %runnable.request.kind, resource = %resource);
        let result = async {
            let mut waited = None;
            let draining = cx.shutdown.reached(shutdown::Stage::Drain);
            tokio::pin!(draining);
            let _lock = tokio::select! {
                lock = locks.acquire(resource, || {
                    tracing::info!("waiting for the lock on `{resource}`");
                    waited = Some(resource.to_string());
                }) => lock?,
                _ = &mut draining => return Ok(Step::Stopping),
            };
            let _slot = tokio::select! {
                slot = slots.acquire() => slot.context("failed to get a run slot")?,
                _ = &mut draining => return Ok(Step::Stopping),
            };
            // Waiting for the lock or a slot may have outlasted the runner's wish to go on.
            if cx.shutdown.stage() >= shutdown::Stage::Drain {
                return Ok(Step::Stopping);
            }
            if claims.is_none() {
                let (q, claimed) = claim_queue(cx, &queue[index..]).await?;
                verdicts = claimed;
                *claims = Some(q);
            }
            let Some(q) = claims.as_ref() else {
                return Err(DispatchError::Other(anyhow::anyhow!(
                    "the queue's claims are missing"
                )));
            };
            let mut recovery = cx
                .recoveries
                .lock()
                .ok()
                .and_then(|mut r| r.remove(&item.log_id));
            let verdict = verdicts
                .remove(&item.log_id)
                .unwrap_or_else(|| claims::Claimed::Lost("no claim was asked for it".into()));
            if let Some(not_ours) = admit(cx, &item.log_id, verdict, &mut recovery).await {
                return Ok(not_ours);
            }
            if !q.start(&item.log_id).await {
                run::abandon(cx, &item.log_id).await;
                return Ok(Step::Lost(
                    "another runner, which took its claim over while it waited".into(),
                ));
            }
            // A result of this request journaled as finished (by any process of this
            // state directory) is published, never run again; its claim stays until then.
            let results = crate::record::ResultDir::of(&cx.results_dir, &item.log_id);
            if results.status().exists() {
                q.leave(&item.log_id, false).await;
                return Ok(Step::Recorded);
            }
            if cx.shutdown.stage() >= shutdown::Stage::Drain {
                q.leave(&item.log_id, true).await;
                return Ok(Step::Stopping);
            }
            let done = run::execute(cx, item, runnable, waited, recovery).await;
            // Given up before its container started: the next runner need not wait
            // out the claim. One that started keeps its claim for the journal.
            let started = journal::read(&results).is_some();
            q.leave(&item.log_id, done.is_err() && !started).await;
            done.map(|f| Step::Finished(Box::new(f)))
        }
        .instrument(span)
        .await;
        match result {
            Ok(Step::Finished(f)) => record(*f),
            Ok(Step::Stopping) => {
                tracing::info!(id = %item.log_id, "the runner is stopping: left for a later pass")
            }
            Ok(Step::Recorded) => {
                tracing::info!(id = %item.log_id, "already recorded by another runner")
            }
            Ok(Step::Lost(holder)) => {
                tracing::info!(id = %item.log_id, "claimed by {holder}: it and the rest of `{resource}`'s queue are left to that runner");
                if let Ok(mut d) = cx.deferred.lock() {
                    d.push((item.log_id.clone(), holder));
                }
                break;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "request {} did not finish; it runs again in a later pass",
                    item.log_id
                )))
            }
        }
    }
    Ok(())
}

/// Claim the queue's requests from `rest` on, in one push: the queue's claims, and what
/// became of each request's claim.
async fn claim_queue(
    cx: &PassContext,
    rest: &[WorkItem],
) -> Result<
    (
        claims::QueueClaims,
        std::collections::HashMap<String, claims::Claimed>,
    ),
    DispatchError,
> {
    let asks: Vec<claims::Ask> = rest
        .iter()
        .filter(|i| matches!(i.action, Action::Run(_)))
        .map(|i| claims::Ask {
            id: i.log_id.clone(),
            attempt: cx
                .recoveries
                .lock()
                .ok()
                .map_or(1, |r| lifecycle::attempt_of(r.get(&i.log_id))),
        })
        .collect();
    let config = cx.config.clone();
    let (q, claimed) = cx
        .claims
        .take_queue(asks.clone(), move |m, tip, id| {
            recorded(m, tip, &config, id)
        })
        .await
        .map_err(|e| DispatchError::Git(e.context("failed to claim the requests")))?;
    Ok((q, asks.into_iter().map(|a| a.id).zip(claimed).collect()))
}

/// What request `id`'s claim `verdict` means: `None`, it is this runner's to run (a claim
/// taken over makes the holder's attempt interrupted, in `recovery`); otherwise why not, with
/// this runner's own unfinished attempt at it dropped.
async fn admit(
    cx: &PassContext,
    id: &str,
    verdict: claims::Claimed,
    recovery: &mut Option<journal::Recovery>,
) -> Option<Step> {
    match verdict {
        claims::Claimed::Won(_) => None,
        claims::Claimed::TakenOver { previous, .. } => {
            let why = format!(
                "runner `{}` on {} stopped renewing its claim while attempt {} ran",
                previous.runner, previous.host, previous.attempt
            );
            tracing::warn!("taking over: {why}");
            recovery.get_or_insert_with(|| journal::interrupted(previous.attempt, why, &cx.config));
            None
        }
        claims::Claimed::Done => {
            run::abandon(cx, id).await;
            Some(Step::Recorded)
        }
        claims::Claimed::Lost(holder) => {
            run::abandon(cx, id).await;
            Some(Step::Lost(holder))
        }
    }
}

/// How one queued request went.
pub(super) enum Step {
    /// It reached a final state.
    Finished(Box<Finished>),
    /// The runner is stopping; it was left for a later pass.
    Stopping,
    /// Another runner recorded it meanwhile.
    Recorded,
    /// Another runner holds its claim (named).
    Lost(String),
}
