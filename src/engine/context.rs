//! What the tasks of one pass share: the mirror, the checkouts, the executor (connected at its
//! first need), the claims, the check-run sink.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::OnceCell;

use crate::commit::CommitId;
use crate::config::HostLimits;
use crate::contract::handlers::CheckoutScope;
use crate::contract::repo_config::RepoConfig;
use crate::exec::{Executor, ExecutorChoice};
use crate::forge::GitHub;
use crate::git::{Checkouts, Mirror};
use crate::record::{ResultDir, Status};

use super::report::DispatchError;
use super::{checks, claims, journal, shutdown};

/// A pass's executor, connected at its first need: a pass with nothing to run and nothing
/// left over does not need the runtime to answer.
pub(super) struct Connection {
    pub(super) choice: ExecutorChoice,
    pub(super) connected: OnceCell<Arc<dyn Executor>>,
}

impl Connection {
    pub(super) fn new(choice: ExecutorChoice) -> Self {
        Connection {
            choice,
            connected: OnceCell::new(),
        }
    }

    /// The executor, connecting if this pass has not yet; a failure is tried again at the
    /// next need.
    pub(super) async fn get(&self) -> anyhow::Result<&Arc<dyn Executor>> {
        self.connected
            .get_or_try_init(|| self.choice.connect())
            .await
    }

    /// The executor, if this pass connected it.
    pub(super) fn connected(&self) -> anyhow::Result<&Arc<dyn Executor>> {
        self.connected
            .get()
            .ok_or_else(|| anyhow::anyhow!("the executor was not connected"))
    }
}

/// The pass's mirror, shared by the claims, the committer and the checkouts. Work that talks
/// to the remote runs off the async threads, one at a time, with a token asked of the forge
/// just before, so an installation token never goes stale; local reads take the lock only.
#[derive(Clone)]
pub(crate) struct SharedMirror {
    mirror: Arc<Mutex<Mirror>>,
    auth: Option<GitHub>,
}

impl SharedMirror {
    pub(super) fn new(mirror: Mirror, auth: Option<GitHub>) -> Self {
        SharedMirror {
            mirror: Arc::new(Mutex::new(mirror)),
            auth,
        }
    }

    /// Run `f`, which may fetch and push, on the mirror off the async threads.
    pub(super) async fn remote<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Mirror) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let token = git_token(self.auth.as_ref()).await?;
        let (mirror, refresh) = (self.mirror.clone(), self.auth.is_some());
        tokio::task::spawn_blocking(move || {
            let mut m = mirror
                .lock()
                .map_err(|_| anyhow::anyhow!("mirror lock poisoned"))?;
            if refresh {
                m.set_token(token);
            }
            f(&mut m)
        })
        .await
        .context("failed to join a git task")?
    }

    /// Read what the mirror holds (no network), on this thread.
    pub(super) fn local<T>(
        &self,
        f: impl FnOnce(&Mirror) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let m = self
            .mirror
            .lock()
            .map_err(|_| anyhow::anyhow!("mirror lock poisoned"))?;
        f(&m)
    }
}

/// A request that reached a final state and waits to be published: its status (which names
/// the file, commit and id) and the state-dir directory holding its log and status files.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub status: Status,
    pub files: ResultDir,
}

/// What the tasks of one pass share.
pub(crate) struct PassContext {
    pub(super) runner: String,
    /// Short key of the repository, for container names.
    pub(super) scope: String,
    pub(super) results_dir: PathBuf,
    pub(super) limits: HostLimits,
    pub(super) secrets: crate::secrets::HostSecrets,
    pub(super) mirror: SharedMirror,
    pub(super) checkouts: tokio::sync::Mutex<Checkouts>,
    pub(super) executor: Connection,
    /// One image build at a time: concurrent requests of one `build:` handler build once.
    pub(super) builds: tokio::sync::Mutex<()>,
    /// Images this pass found or made present: the engine is asked once per image and pass,
    /// not once per request (one removed meanwhile fails its container's creation, which a
    /// later pass tries again).
    pub(super) images: Mutex<std::collections::HashSet<String>>,
    /// How long the engine took for each container this pass started.
    pub(super) phases: Arc<Mutex<Vec<crate::exec::Phases>>>,
    /// Containers being removed, their results recorded.
    pub(super) removals: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Check-run events, when a forge is configured.
    pub(super) checks: Option<checks::CheckSink>,
    /// Whether to start new requests, and when to stop running ones.
    pub(super) shutdown: shutdown::Shutdown,
    /// How to go on with attempts a dead runner process left, by request.
    pub(super) recoveries: Mutex<BTreeMap<String, journal::Recovery>>,
    /// This runner's claims on the remote.
    pub(super) claims: claims::Claims,
    /// Requests another runner holds, with the holder.
    pub(super) deferred: Mutex<Vec<(String, String)>>,
    /// The repository contract at the tip.
    pub(super) config: RepoConfig,
    /// Where the pass counts what it did.
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// When the pass found its requests (their queue wait starts here).
    pub(super) found_at: std::time::Instant,
}

impl PassContext {
    pub(super) fn check(&self, event: checks::CheckEvent) {
        if let Some(sink) = &self.checks {
            sink.emit(event);
        }
    }
}

impl PassContext {
    pub(super) fn executor(&self) -> anyhow::Result<&Arc<dyn Executor>> {
        self.executor.connected()
    }

    /// The checkout a handler of `scope` mounts for a request of `commit`.
    pub(super) async fn checkout(
        &self,
        commit: CommitId,
        scope: CheckoutScope,
    ) -> anyhow::Result<PathBuf> {
        let hidden = match scope {
            CheckoutScope::Lean => vec![
                self.config.output_path.as_str(),
                self.config.processed_path.as_str(),
            ],
            CheckoutScope::Full => Vec::new(),
        };
        let mut checkouts = self.checkouts.lock().await;
        self.mirror
            .local(|mirror| checkouts.get(mirror, commit, &hidden))
    }

    /// Remove a recorded request's container while the next request of its queue starts;
    /// the pass waits for every removal before it ends ([`PassContext::wind_down`]).
    pub(super) fn remove_later(
        &self,
        executor: &Arc<dyn Executor>,
        container: String,
        phases: crate::exec::Phases,
    ) {
        let (executor, of_pass, secrets) = (
            executor.clone(),
            self.phases.clone(),
            self.secrets.dir().to_path_buf(),
        );
        let removal = tokio::spawn(async move {
            let removing = std::time::Instant::now();
            executor.remove(&container).await;
            crate::secrets::unstage(&secrets, &container);
            if phases.create > 0 {
                if let Ok(mut all) = of_pass.lock() {
                    all.push(crate::exec::Phases {
                        remove: crate::exec::us_since(removing),
                        ..phases
                    });
                }
            }
        });
        if let Ok(mut removals) = self.removals.lock() {
            removals.push(removal);
        }
    }

    /// Wait for the containers being removed, then remove the checkouts no container mounts.
    pub(super) async fn wind_down(&self) {
        let removals = self
            .removals
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for removal in removals {
            let _ = removal.await;
        }
        self.sweep_checkouts().await;
    }

    /// Remove the checkouts this pass did not use and no container mounts. Only after a
    /// pass that ran containers: the engine is asked which directories are mounted.
    pub(super) async fn sweep_checkouts(&self) {
        let Ok(docker) = self.executor() else { return };
        match docker.mount_sources().await {
            Ok(mounted) => {
                let mut checkouts = self.checkouts.lock().await;
                let removed = checkouts.sweep(&mounted);
                tracing::debug!(removed, kept = checkouts.in_use(), "swept checkouts");
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "checkouts kept: the engine did not list its mounts")
            }
        }
    }

    pub(super) async fn object_id(&self, commit: CommitId, path: &str) -> anyhow::Result<String> {
        self.mirror.local(|mirror| {
            mirror
                .object_id(commit, path)
                .map(|o| o.to_string())
                .with_context(|| format!("failed to find {path} at {commit}"))
        })
    }
}

/// A token for git from `auth`, if any; a forge that cannot mint one fails the pass as git.
pub(crate) async fn git_token(auth: Option<&GitHub>) -> Result<Option<String>, DispatchError> {
    match auth {
        Some(forge) => forge
            .git_token()
            .await
            .map(Some)
            .map_err(|e| DispatchError::Git(anyhow::anyhow!("no token for git: {e}"))),
        None => Ok(None),
    }
}
