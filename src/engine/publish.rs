//! Turning finished requests into one commit on the branch and pushing it.
//!
//! Results wait in the state directory until their commit is pushed; only then are they
//! removed there, so a push that fails leaves them for the next pass instead of losing them.

use crate::commit::CommitId;
use anyhow::Context;
use tokio::sync::mpsc;

use crate::contract::repo_config::RepoConfig;
use crate::git::{Change, Identity, Mirror, Published};
use crate::record::{Ledger, State};

use super::context::{Finished, SharedMirror};

/// Where publishing happens and as whom.
#[derive(Clone)]
pub(crate) struct Target {
    pub mirror: SharedMirror,
    pub branch: String,
    pub config: RepoConfig,
    pub identity: Identity,
    pub runner: String,
    pub attempts: usize,
    /// Check-run events, when a forge is configured.
    pub checks: Option<super::checks::CheckSink>,
    /// Where git's token comes from (handlers may run longer than an installation token lives).
    /// The claims to drop once their results are on the branch.
    pub claims: super::claims::Claims,
    /// Leave the claims of this pass's results on the remote for the next pass
    /// ([`super::DispatchOptions::keep_recorded_claims`]).
    pub keep_recorded_claims: bool,
}

/// A finished request's log and status, as read from its result directory.
pub(crate) struct ResultFiles {
    log: Vec<u8>,
    status: Vec<u8>,
}

impl ResultFiles {
    /// Read `done`'s files.
    pub(crate) fn read(done: &Finished) -> anyhow::Result<Self> {
        Ok(ResultFiles {
            log: std::fs::read(done.files.log()).context("failed to read a finished run log")?,
            status: std::fs::read(done.files.status())
                .context("failed to read a finished status")?,
        })
    }
}

/// The repository changes that record `done`, in the layout of `ledger`.
pub(crate) fn changes(
    config: &RepoConfig,
    ledger: &Ledger,
    done: &Finished,
    files: &ResultFiles,
) -> Vec<Change> {
    let id = &done.status.id;
    let mut out = vec![
        Change::Write {
            path: ledger.log(id),
            bytes: files.log.clone(),
        },
        Change::Write {
            path: ledger.status(id),
            bytes: files.status.clone(),
        },
    ];
    let keep_in_inbox = done.status.state == State::Succeeded && !config.cleanup_after_success;
    if !keep_in_inbox {
        out.push(Change::Move {
            from: done.status.file.clone(),
            to: ledger.archived(id),
        });
    }
    out
}

/// The commit message: a summary line, one line per request, and trailers.
pub(crate) fn message(batch: &[Finished], runner: &str) -> String {
    let subject = match batch {
        [one] => format!("codex: {} {}", one.status.id, one.status.state.as_str()),
        many => {
            let ok = many
                .iter()
                .filter(|f| f.status.state == State::Succeeded)
                .count();
            format!(
                "codex: {} requests ({ok} succeeded, {} not)",
                many.len(),
                many.len() - ok
            )
        }
    };
    let mut body = String::new();
    for f in batch {
        let reason = f
            .status
            .reason
            .as_deref()
            .map(|r| r.lines().next().unwrap_or_default())
            .unwrap_or_default();
        body.push_str(&format!(
            "- {} ({}): {} {}\n",
            f.status.id,
            f.status.file,
            f.status.state.as_str(),
            reason
        ));
    }
    let mut trailers = String::new();
    for f in batch {
        trailers.push_str(&format!(
            "Codex-Request: {}\nCodex-State: {}\n",
            f.status.id,
            f.status.state.as_str()
        ));
    }
    trailers.push_str(&format!("Codex-Runner: {runner}\n"));
    crate::secrets::mask(&format!("{subject}\n\n{body}\n{trailers}")).into_owned()
}

/// How long the committer waits, after a result arrives, for others to join it: results that
/// finish close together share one commit and one push (against a forge every push is a round
/// trip of hundreds of milliseconds).
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// What the committer did in a pass.
pub(crate) struct Committed {
    /// The commits it pushed.
    pub published: Vec<Published>,
    /// Pushes that failed (their results stay in the state dir).
    pub errors: Vec<anyhow::Error>,
    /// Claims of recorded requests it left on the remote
    /// ([`Target::keep_recorded_claims`]).
    pub kept: Vec<String>,
}

/// Publish finished requests as they arrive, batching those that finish within
/// [`BATCH_WINDOW`] of the first and whatever queued up during a push.
pub(crate) async fn committer(
    target: Target,
    mut rx: mpsc::UnboundedReceiver<Finished>,
) -> Committed {
    let mut published = Vec::new();
    let mut errors = Vec::new();
    // Claims whose results are on the branch (the sweep's, then this pass's own): their
    // deletion rides in the next results push, or, once the pass has nothing more to
    // publish, goes in a push of its own.
    let mut unreleased: Vec<String> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let window_ends = tokio::time::Instant::now() + BATCH_WINDOW;
        while let Ok(Some(more)) = tokio::time::timeout_at(window_ends, rx.recv()).await {
            batch.push(more);
        }
        unreleased.extend(target.claims.take_stale());
        match publish_batch(&target, &batch, &unreleased).await {
            Ok(p) => {
                crate::crashpoint::hit("before-check");
                tracing::info!(commit = %p.commit, requests = batch.len(), replays = p.replays, "published results");
                for f in &batch {
                    if let Some(sink) = &target.checks {
                        sink.emit(finished_event(&target, f, &p.commit.to_string()));
                    }
                    let _ = std::fs::remove_dir_all(&f.files.dir);
                }
                unreleased = batch
                    .iter()
                    .map(|f| crate::git::claims::claim_ref(&target.branch, &f.status.id))
                    .collect();
                published.push(p);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "failed to publish results; they stay in the state dir for the next pass");
                errors.push(e);
            }
        }
    }
    // What the sweep found and no push carried goes now; this pass's own may wait for the
    // next pass's first push.
    let mut left = target.claims.take_stale();
    let kept = if target.keep_recorded_claims {
        unreleased
    } else {
        left.extend(unreleased);
        Vec::new()
    };
    target.claims.drop_refs(left).await;
    Committed {
        published,
        errors,
        kept,
    }
}

/// The check event of `f`, pushed (or about to be) at `pushed` (a commit or the branch).
fn finished_event(target: &Target, f: &Finished, pushed: &str) -> super::checks::CheckEvent {
    super::checks::CheckEvent::Finished {
        status: Box::new(f.status.clone()),
        log: std::fs::read(f.files.log()).unwrap_or_default(),
        pushed: pushed.to_string(),
        log_path: Ledger::of(&target.config).log(&f.status.id),
    }
}

/// The ledger of the branch at `tip`: its `codex.repo.yaml` decides the layout, so results
/// replayed over a layout migration land where the migrated tree expects them. A contract
/// that no longer parses there keeps the pass's own.
fn ledger_at(mirror: &Mirror, tip: CommitId, fallback: &RepoConfig) -> Ledger {
    let at_tip = mirror
        .read_file(tip, crate::contract::repo_config::CONFIG_PATH)
        .ok()
        .flatten()
        .and_then(|bytes| RepoConfig::parse(&bytes).ok());
    match at_tip {
        Some(config) => Ledger::of(fallback).with_layout(config.layout),
        None => Ledger::of(fallback),
    }
}

/// Publish `batch` in one commit; the push also deletes `recorded`, claims whose requests
/// the branch records already.
async fn publish_batch(
    target: &Target,
    batch: &[Finished],
    recorded: &[String],
) -> anyhow::Result<Published> {
    let riders = recorded.to_vec();
    // Read once: the changes are made anew from each tip they are built on (a replay).
    let mut files = Vec::new();
    for f in batch {
        files.push((f.clone(), ResultFiles::read(f)?));
    }
    let msg = message(batch, &target.runner);
    if let Some(sink) = &target.checks {
        // Journaled before the push, sent after it (or by the next pass, if this runner dies
        // in between): the link names the branch, the one known before the push.
        for f in batch {
            sink.hold(finished_event(target, f, &target.branch));
        }
    }
    let t = target.clone();
    target
        .mirror
        .remote(move |mirror| {
            let build = |m: &Mirror, tip| {
                let ledger = ledger_at(m, tip, &t.config);
                Ok(files
                    .iter()
                    .flat_map(|(f, read)| changes(&t.config, &ledger, f, read))
                    .collect())
            };
            mirror.publish_with(&t.branch, build, &msg, &t.identity, t.attempts, &riders)
        })
        .await
}
