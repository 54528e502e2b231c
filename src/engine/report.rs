//! What a pass is asked to do ([`DispatchOptions`]), what it did ([`PassReport`]), and why it
//! could not ([`DispatchError`], each with its exit code).

use crate::commit::CommitId;
use std::path::PathBuf;

use crate::config::HostLimits;
use crate::contract::Violations;
use crate::exec::ExecutorChoice;
use crate::exit;
use crate::forge::GitHub;
use crate::git::{Identity, Published};
use crate::record::Status;

use super::checks::ForgeTarget;
use super::shutdown;

/// How to run a pass.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Git remote: URL or path.
    pub remote: String,
    /// Branch to run from; `None` means the repository's mainline branch.
    pub branch: Option<String>,
    /// Where the mirror and checkouts live.
    pub work_dir: PathBuf,
    /// Where results wait, and the lock files.
    pub state_dir: PathBuf,
    /// This runner's name.
    pub runner: String,
    /// Requests on different resources that may run at once.
    pub concurrency: usize,
    /// Commit identity.
    pub identity: Identity,
    /// Host ceilings.
    pub limits: HostLimits,
    /// Secrets handlers may name.
    pub secrets: crate::secrets::HostSecrets,
    /// Push attempts before giving up for this pass.
    pub push_attempts: usize,
    /// Where check runs go; none: no check runs (execution does not depend on them).
    pub forge: Option<ForgeTarget>,
    /// Where git over http(s) gets its token (`x-access-token`): the forge's credentials,
    /// asked again before every fetch and push so an installation token never goes stale.
    pub git_auth: Option<GitHub>,
    /// Labels this runner carries; a request's `runs-on` must be among them.
    pub labels: Vec<String>,
    /// Drain and cancel on shutdown (default: never).
    pub shutdown: shutdown::Shutdown,
    /// After the first SIGTERM, how long running handlers may go on.
    pub drain_timeout: std::time::Duration,
    /// Leave the claims of the requests a pass recorded on the remote
    /// ([`PassReport::kept_claims`]) instead of dropping them in a push of their own at the
    /// end of the pass: a daemon's next pass sweeps them and their deletion rides on its first
    /// push, and the daemon drops what is still kept after a quiet spell or when it stops
    /// ([`release_claims`]). A one-shot pass drops them itself.
    pub keep_recorded_claims: bool,
    /// Where handlers run (the host config's choice; Docker by default).
    pub executor: ExecutorChoice,
    /// Where the pass counts what it did ([`crate::metrics::global`] in the runner).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Why a pass could not complete; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// `codex.repo.yaml` or `handlers/index.yml` is broken: nothing ran, nothing moved.
    #[error("the repository contract is broken at {commit}; nothing ran:\n{violations}")]
    Contract {
        /// The tip that holds the broken files.
        commit: CommitId,
        /// What is wrong.
        violations: Violations,
    },
    /// The runner refuses to run as asked (e.g. an unmerged branch under enforcement).
    #[error("{0}")]
    Refused(String),
    /// The git remote failed (fetch or push, after retries).
    #[error("git failed: {0:#}")]
    Git(anyhow::Error),
    /// The executor (the Docker engine, the Kubernetes API server) failed; unfinished
    /// requests run in a later pass.
    #[error("the executor failed: {0:#}")]
    Docker(anyhow::Error),
    /// Anything else (state directory, I/O).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl From<std::io::Error> for DispatchError {
    fn from(e: std::io::Error) -> Self {
        DispatchError::Other(e.into())
    }
}

impl From<serde_json::Error> for DispatchError {
    fn from(e: serde_json::Error) -> Self {
        DispatchError::Other(e.into())
    }
}

impl DispatchError {
    /// The same failure, saying what it stopped.
    pub(crate) fn context(self, what: String) -> Self {
        match self {
            DispatchError::Git(e) => DispatchError::Git(e.context(what)),
            DispatchError::Docker(e) => DispatchError::Docker(e.context(what)),
            DispatchError::Other(e) => DispatchError::Other(e.context(what)),
            refused => refused,
        }
    }

    /// The process exit code for this failure (see README).
    pub fn exit_code(&self) -> i32 {
        match self {
            DispatchError::Other(_) => exit::FAILED,
            DispatchError::Refused(_) => exit::USAGE,
            DispatchError::Contract { .. } => exit::CONTRACT,
            DispatchError::Git(_) => exit::GIT,
            DispatchError::Docker(_) => exit::EXECUTOR,
        }
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// The branch it ran from.
    pub branch: String,
    /// The tip it planned from.
    pub tip: Option<CommitId>,
    /// The status of every request recorded in this pass, in the order they finished.
    pub items: Vec<Status>,
    /// Inbox entries left alone.
    pub ignored: Vec<(String, String)>,
    /// Commits pushed.
    pub published: Vec<Published>,
    /// Requests another runner holds the claim on: (id, holder).
    pub deferred: Vec<(String, String)>,
    /// When to look again, because another runner holds claims this pass could not take
    /// (they are taken over once their holder stops renewing them).
    pub look_again: Option<std::time::Duration>,
    /// Fetches and pushes asked of the remote during the pass.
    pub round_trips: crate::git::RoundTrips,
    /// The engine's time for each step of the containers this pass started.
    pub lifecycle: EngineTimes,
    /// Claims of requests this pass recorded, left on the remote for the next pass (with
    /// [`DispatchOptions::keep_recorded_claims`]).
    pub kept_claims: Vec<String>,
}

/// The engine's time for each step of a pass's containers: the median over them, in
/// milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct EngineTimes {
    /// Containers started.
    pub containers: usize,
    pub create_ms: f64,
    pub attach_ms: f64,
    pub start_ms: f64,
    pub run_ms: f64,
    pub wait_ms: f64,
    pub remove_ms: f64,
}

impl EngineTimes {
    pub(super) fn of(all: &[crate::exec::Phases]) -> Self {
        let median = |f: fn(&crate::exec::Phases) -> u64| {
            let mut v: Vec<u64> = all.iter().map(f).collect();
            v.sort_unstable();
            v.get(v.len() / 2).map_or(0.0, |us| *us as f64 / 1000.0)
        };
        EngineTimes {
            containers: all.len(),
            create_ms: median(|p| p.create),
            attach_ms: median(|p| p.attach),
            start_ms: median(|p| p.start),
            run_ms: median(|p| p.run),
            wait_ms: median(|p| p.wait),
            remove_ms: median(|p| p.remove),
        }
    }
}
