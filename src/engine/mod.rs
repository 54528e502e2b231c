//! The dispatcher: one pass from the branch tip to published results.
//!
//! sync → plan → (per resource, in merge order) lock → run → record → publish. The engine owns
//! each request's state; `exec`, `git` and `record` do the I/O it asks for.

mod checks;
mod claims;
mod journal;
mod lifecycle;
pub mod locks;
mod publish;
mod pulls;
mod run;
pub mod shutdown;
#[cfg(test)]
mod tests;

pub use checks::{validation_update, ForgeTarget};
pub use pulls::{validate_pull, PullJob, PullVerdict};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tracing::Instrument;

use crate::config::HostLimits;
use crate::contract::handlers::{CheckoutScope, HandlerIndex, INDEX_PATH};
use crate::contract::repo_config::{RepoConfig, CONFIG_PATH};
use crate::contract::request::request_stem;
use crate::contract::yaml::MAX_FILE_BYTES;
use crate::contract::{Violation, Violations};
use crate::exec::{Executor, ExecutorChoice};
use crate::exit;
use crate::forge::GitHub;
use crate::git::{Checkouts, Identity, Mirror, Oid, Published};
use crate::plan::{self, Action, Done, InboxEntry, WorkItem};
use crate::record::{read_status, Ledger, ResultFile, Status};

use locks::ResourceLocks;
use publish::{Committed, Target};

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
}

/// A pass's executor, connected at its first need: a pass with nothing to run and nothing
/// left over does not need the runtime to answer.
struct Connection {
    choice: ExecutorChoice,
    connected: OnceCell<Arc<dyn Executor>>,
}

impl Connection {
    fn new(choice: ExecutorChoice) -> Self {
        Connection {
            choice,
            connected: OnceCell::new(),
        }
    }

    /// The executor, connecting if this pass has not yet; a failure is tried again at the
    /// next need.
    async fn get(&self) -> anyhow::Result<&Arc<dyn Executor>> {
        self.connected
            .get_or_try_init(|| self.choice.connect())
            .await
    }

    /// The executor, if this pass connected it.
    fn connected(&self) -> anyhow::Result<&Arc<dyn Executor>> {
        self.connected
            .get()
            .ok_or_else(|| anyhow::anyhow!("the executor was not connected"))
    }
}

/// Why a pass could not complete; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// `codex.repo.yaml` or `handlers/index.yml` is broken: nothing ran, nothing moved.
    #[error("the repository contract is broken at {commit}; nothing ran:\n{violations}")]
    Contract {
        /// The tip that holds the broken files.
        commit: String,
        /// What is wrong.
        violations: Violations,
    },
    /// The runner refuses to run as asked (e.g. an unmerged branch under enforcement).
    #[error("{0}")]
    Refused(String),
    /// The git remote failed (fetch or push, after retries).
    #[error("git failed: {0:#}")]
    Git(anyhow::Error),
    /// The Docker engine failed; unfinished requests run in a later pass.
    #[error("docker failed: {0:#}")]
    Docker(anyhow::Error),
    /// Anything else (state directory, I/O).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl DispatchError {
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
    pub tip: Option<String>,
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
    fn of(all: &[crate::exec::Phases]) -> Self {
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

/// A request that reached a final state and waits to be published: its status (which names
/// the file, commit and id) and the state-dir directory holding its log and status files.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub status: Status,
    pub dir: PathBuf,
}

/// What the tasks of one pass share.
pub(crate) struct PassContext {
    runner: String,
    /// Short key of the repository, for container names.
    scope: String,
    results_dir: PathBuf,
    limits: HostLimits,
    secrets: crate::secrets::HostSecrets,
    mirror: Arc<Mutex<Mirror>>,
    checkouts: tokio::sync::Mutex<Checkouts>,
    executor: Connection,
    /// One image build at a time: concurrent requests of one `build:` handler build once.
    builds: tokio::sync::Mutex<()>,
    /// Images this pass found or made present: the engine is asked once per image and pass,
    /// not once per request (one removed meanwhile fails its container's creation, which a
    /// later pass tries again).
    images: Mutex<std::collections::HashSet<String>>,
    /// How long the engine took for each container this pass started.
    phases: Arc<Mutex<Vec<crate::exec::Phases>>>,
    /// Containers being removed, their results recorded.
    removals: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Check-run events, when a forge is configured.
    checks: Option<checks::CheckSink>,
    /// Whether to start new requests, and when to stop running ones.
    shutdown: shutdown::Shutdown,
    /// How to go on with attempts a dead runner process left, by request.
    recoveries: Mutex<BTreeMap<String, journal::Recovery>>,
    /// This runner's claims on the remote.
    claims: claims::Claims,
    /// Requests another runner holds, with the holder.
    deferred: Mutex<Vec<(String, String)>>,
    /// The repository contract at the tip.
    config: RepoConfig,
}

impl PassContext {
    fn check(&self, event: checks::CheckEvent) {
        if let Some(sink) = &self.checks {
            sink.emit(event);
        }
    }
}

impl PassContext {
    fn executor(&self) -> anyhow::Result<&Arc<dyn Executor>> {
        self.executor.connected()
    }

    /// The checkout a handler of `scope` mounts for a request of `commit`.
    async fn checkout(&self, commit: Oid, scope: CheckoutScope) -> anyhow::Result<PathBuf> {
        let hidden = match scope {
            CheckoutScope::Lean => vec![
                self.config.output_path.as_str(),
                self.config.processed_path.as_str(),
            ],
            CheckoutScope::Full => Vec::new(),
        };
        let mut checkouts = self.checkouts.lock().await;
        let mirror = self
            .mirror
            .lock()
            .map_err(|_| anyhow::anyhow!("mirror lock poisoned"))?;
        checkouts.get(&mirror, commit, &hidden)
    }

    /// Remove the checkouts this pass did not use and no container mounts. Only after a
    /// pass that ran containers: the engine is asked which directories are mounted.
    async fn sweep_checkouts(&self) {
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

    async fn object_id(&self, commit: Oid, path: &str) -> anyhow::Result<String> {
        let mirror = self
            .mirror
            .lock()
            .map_err(|_| anyhow::anyhow!("mirror lock poisoned"))?;
        mirror
            .object_id(commit, path)
            .map(|o| o.to_string())
            .with_context(|| format!("failed to find {path} at {commit}"))
    }
}

fn git<T>(r: anyhow::Result<T>) -> Result<T, DispatchError> {
    r.map_err(DispatchError::Git)
}

fn load_repo_config(mirror: &Mirror, tip: Oid) -> Result<RepoConfig, DispatchError> {
    match git(mirror.read_file(tip, CONFIG_PATH))? {
        Some(bytes) => RepoConfig::parse(&bytes).map_err(|v| DispatchError::Contract {
            commit: tip.to_string(),
            violations: v,
        }),
        None => {
            tracing::warn!("no {CONFIG_PATH} at {tip}; using the defaults");
            Ok(RepoConfig::default())
        }
    }
}

/// The handler index at `commit`, checked against the files of that commit.
fn index_at(
    mirror: &Mirror,
    commit: Oid,
) -> Result<Result<HandlerIndex, Violations>, DispatchError> {
    let Some(bytes) = git(mirror.read_file(commit, INDEX_PATH))? else {
        let missing = Violation::new(
            INDEX_PATH,
            "missing-index",
            "the handler index does not exist",
        )
        .hint("add handlers/index.yml");
        return Ok(Err(missing.into()));
    };
    Ok(HandlerIndex::parse(&bytes).and_then(|index| {
        index.check_files(|p| mirror.path_kind(commit, p))?;
        Ok(index)
    }))
}

/// Find the mainline and its contract, then the branch to run from.
///
/// The contract at the mainline tip is the authority: a branch cannot lift
/// `enforce_merge_before_execution` for itself. `main` is asked first; its `mainline_branch`
/// may point elsewhere.
fn resolve_branch(
    mirror: &Mirror,
    opts: &DispatchOptions,
) -> Result<(String, Oid, RepoConfig), DispatchError> {
    let mut mainline = "main".to_string();
    let mut tip = git(mirror.fetch(&mainline))?;
    let mut config = match tip {
        Some(t) => load_repo_config(mirror, t)?,
        None => RepoConfig::default(),
    };
    if config.mainline_branch != mainline {
        mainline = config.mainline_branch.clone();
        tip = git(mirror.fetch(&mainline))?;
        if let Some(t) = tip {
            config = load_repo_config(mirror, t)?;
        }
    }
    let wanted = opts.branch.clone().unwrap_or_else(|| mainline.clone());
    if wanted == mainline {
        let tip = tip.ok_or_else(|| {
            DispatchError::Refused(format!(
                "branch `{mainline}` does not exist on {}",
                crate::git::redact(&opts.remote)
            ))
        })?;
        return Ok((wanted, tip, config));
    }
    if config.enforce_merge {
        return Err(DispatchError::Refused(format!(
            "branch `{wanted}` is not the mainline branch `{mainline}`, and {CONFIG_PATH} on `{mainline}` sets enforce_merge_before_execution: only merged requests run"
        )));
    }
    let tip = git(mirror.fetch(&wanted))?.ok_or_else(|| {
        DispatchError::Refused(format!(
            "branch `{wanted}` does not exist on {}",
            crate::git::redact(&opts.remote)
        ))
    })?;
    Ok((wanted, tip, config))
}

/// An attempt an earlier process journaled but never finished.
struct Leftover {
    id: String,
    dir: PathBuf,
    record: journal::AttemptRecord,
}

/// Results executed in an earlier pass whose commit never reached the remote, and attempts
/// that never finished.
fn pending_results(
    results_dir: &Path,
    mirror: &Mirror,
    tip: Oid,
    config: &RepoConfig,
) -> anyhow::Result<(Vec<Finished>, Vec<Leftover>)> {
    let mut out = Vec::new();
    let mut leftovers = Vec::new();
    let Ok(dirs) = std::fs::read_dir(results_dir) else {
        return Ok((out, leftovers));
    };
    for d in dirs {
        let dir = d?.path();
        let status = match read_status(&dir.join("status.json")) {
            Ok(s) => s,
            Err(_) => {
                match journal::read(&dir) {
                    Some(record) => leftovers.push(Leftover {
                        id: dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        dir,
                        record,
                    }),
                    // Not even journaled: no container was made; it starts afresh.
                    None => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
                continue;
            }
        };
        let already = published_status(mirror, tip, config, &status.id)?.is_some_and(|s| {
            s.commit == status.commit && s.file == status.file && s.attempt == status.attempt
        });
        if already {
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        out.push(Finished { status, dir });
    }
    Ok((out, leftovers))
}

/// The status file of request `id` on the branch at `tip`, in either layout (see
/// [`Ledger::lookups`]); `None` when there is none or it does not parse.
fn published_status(
    mirror: &Mirror,
    tip: Oid,
    config: &RepoConfig,
    id: &str,
) -> anyhow::Result<Option<Status>> {
    for path in Ledger::of(config).lookups(ResultFile::Status, id) {
        if let Some(bytes) = mirror.read_file(tip, &path)? {
            return Ok(serde_json::from_slice::<Status>(&bytes).ok());
        }
    }
    Ok(None)
}

/// Whether request `id` already ran, as the branch at `tip` records it.
fn done_at(
    mirror: &Mirror,
    tip: Oid,
    config: &RepoConfig,
    id: &crate::contract::request::RequestId,
) -> Done {
    let ledger = Ledger::of(config);
    let archived = ledger.lookups(ResultFile::Archived, id.as_str());
    if archived.iter().any(|p| mirror.path_kind(tip, p).is_some()) {
        return Done::Processed;
    }
    match published_status(mirror, tip, config, id.as_str())
        .ok()
        .flatten()
    {
        Some(s) => Done::InPlace(s.file),
        None => Done::No,
    }
}

/// Whether the branch at `tip` records request `id` (archived, or by a status file), in
/// either layout.
fn recorded(mirror: &Mirror, tip: Oid, config: &RepoConfig, id: &str) -> bool {
    let ledger = Ledger::of(config);
    [ResultFile::Archived, ResultFile::Status]
        .into_iter()
        .flat_map(|f| ledger.lookups(f, id))
        .any(|p| mirror.path_kind(tip, &p).is_some())
}

/// What a pass found at the tip, before anything runs.
struct Survey {
    /// Results an earlier pass executed but could not push.
    pending: Vec<Finished>,
    /// Attempts an earlier process started but did not finish.
    leftovers: Vec<Leftover>,
    /// Work in merge order, each request with the handler of the commit that brought it.
    planned: plan::Plan,
}

/// The first-parent commit that brought each of `paths` to `branch` (see
/// [`Mirror::introducing_commits`]), deepening a shallow mirror as far as the oldest takes.
fn introducing_commits(
    mirror: &mut Mirror,
    branch: &str,
    tip: Oid,
    paths: &[String],
) -> Result<std::collections::HashMap<String, (Oid, usize)>, DispatchError> {
    deepen_until(
        mirror,
        "where a pending request was merged",
        |m| m.introducing_commits(tip, paths, 100_000),
        |m, depth| m.deepen(branch, depth),
    )
}

/// `find`'s answer, deepening a shallow mirror (`deepen`) each time it reaches the mirror's
/// history's end ([`crate::git::NeedsDeeper`]): each step asks for four times the history
/// walked so far, and a remote that does not deepen it ends the search.
pub(crate) fn deepen_until<T>(
    mirror: &mut Mirror,
    what: &str,
    mut find: impl FnMut(&Mirror) -> anyhow::Result<T>,
    mut deepen: impl FnMut(&mut Mirror, usize) -> anyhow::Result<()>,
) -> Result<T, DispatchError> {
    let mut reached = None;
    loop {
        let cut = match find(mirror) {
            Ok(found) => return Ok(found),
            Err(e) => match e.downcast_ref::<crate::git::NeedsDeeper>() {
                Some(cut) => cut.depth,
                None => return Err(DispatchError::Git(e)),
            },
        };
        if reached.is_some_and(|r| cut <= r) {
            return Err(DispatchError::Git(anyhow::anyhow!(
                "the remote did not deepen the mirror's history past {cut} commits"
            )));
        }
        reached = Some(cut);
        let want = (cut + 1).saturating_mul(4);
        tracing::info!(
            walked = cut,
            depth = want,
            "deepening the mirror to find {what}"
        );
        git(deepen(mirror, want))?;
    }
}

/// Read the inbox at `tip`, find each request's merge commit and index, and plan.
fn survey(
    mirror: &mut Mirror,
    branch: &str,
    tip: Oid,
    config: &RepoConfig,
    results_dir: &Path,
) -> Result<Survey, DispatchError> {
    let tip_index = index_at(mirror, tip)?.map_err(|violations| DispatchError::Contract {
        commit: tip.to_string(),
        violations,
    })?;
    let (pending, leftovers) = pending_results(results_dir, mirror, tip, config)?;
    let raw = git(mirror.list_dir(tip, &config.trigger_path, MAX_FILE_BYTES))?;
    let paths: Vec<String> = raw
        .iter()
        .filter(|(p, _, _)| request_stem(p.rsplit('/').next().unwrap_or_default()).is_some())
        .map(|(p, _, _)| p.clone())
        .collect();
    let intro = introducing_commits(mirror, branch, tip, &paths)?;
    let mirror = &*mirror;
    let deepest = intro.values().map(|(_, d)| *d).max().unwrap_or(0);
    // Handler code each bringing commit changes, unless the repository allows that.
    let mut code: BTreeMap<Oid, Vec<String>> = BTreeMap::new();
    if !config.allow_handler_changes {
        for (commit, _) in intro.values() {
            if !code.contains_key(commit) {
                let changed = git(mirror.changed_by(*commit))?;
                let handler_code = changed.into_iter().filter(|p| plan::is_handler_code(p));
                code.insert(*commit, handler_code.collect());
            }
        }
    }
    let entries: Vec<InboxEntry> = raw
        .into_iter()
        .map(|(path, content, object)| {
            let (commit, depth) = intro.get(&path).copied().unwrap_or((tip, 0));
            InboxEntry {
                path,
                content,
                object,
                commit: commit.to_string(),
                order: deepest - depth,
                code_changes: code.get(&commit).cloned().unwrap_or_default(),
            }
        })
        .collect();

    // A request runs with the handlers of the commit that brought it.
    let mut indexes: BTreeMap<String, Result<HandlerIndex, Violations>> = BTreeMap::new();
    indexes.insert(tip.to_string(), Ok(tip_index));
    for e in &entries {
        if !indexes.contains_key(&e.commit) {
            let commit = crate::git::parse_oid(&e.commit)?;
            indexes.insert(e.commit.clone(), index_at(mirror, commit)?);
        }
    }
    let done = |id: &crate::contract::request::RequestId| done_at(mirror, tip, config, id);
    let index_at_commit = |commit: &str| match indexes.get(commit) {
        Some(Ok(index)) => Ok(index),
        Some(Err(v)) => Err(v.0.as_slice()),
        None => Err(&[] as &[Violation]),
    };
    let planned = plan::plan(&entries, index_at_commit, done);
    for (path, why) in &planned.ignored {
        tracing::warn!(path = %path, "ignored: {why}");
    }
    Ok(Survey {
        pending,
        leftovers,
        planned,
    })
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

/// Stop and remove the containers a dead process of this runner left on this host. Docker
/// being away is not this pass's problem unless it has requests to run.
async fn reap_orphans(opts: &DispatchOptions, executor: &Connection, keep: &[String]) {
    let reaped = async {
        let docker = executor.get().await?;
        let reaped = docker
            .reap_orphans(&opts.runner, opts.limits.grace, keep)
            .await?;
        // Secret files a dead process staged go once their container is gone.
        let live = docker.managed_containers(Some(&opts.runner)).await?;
        crate::secrets::sweep(
            opts.secrets.dir(),
            &crate::exec::spec::container_prefix(&opts.runner),
            &live,
            crate::exec::is_runner_process,
        );
        anyhow::Ok(reaped)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(60), reaped).await {
        Ok(Ok(names)) if !names.is_empty() => {
            tracing::warn!(containers = ?names, "removed containers left by a dead runner")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %format!("{e:#}"), "no clean-up of leftovers: Docker did not answer")
        }
        Err(_) => tracing::warn!("no clean-up of leftovers: Docker took over a minute"),
    }
}

/// What the journal says to do with the attempts dead processes left.
#[derive(Default)]
struct Recovered {
    /// How each request goes on.
    plans: BTreeMap<String, journal::Recovery>,
    /// Requests whose container a live sibling process owns: not this pass's.
    busy: Vec<String>,
    /// Containers to follow, which the leftover clean-up must not touch.
    followed: Vec<String>,
    /// Processes whose checkouts those containers have mounted.
    mounted: Vec<u32>,
}

/// Ask the engine what became of each leftover attempt and decide how it goes on.
async fn recover(
    leftovers: Vec<Leftover>,
    planned: &plan::Plan,
    config: &RepoConfig,
    executor: &Connection,
) -> Result<Recovered, DispatchError> {
    let mut out = Recovered::default();
    if leftovers.is_empty() {
        return Ok(out);
    }
    let docker = executor.get().await.map_err(|e| {
        DispatchError::Docker(e.context(format!(
            "{} request(s) have an unfinished attempt whose container must be looked at first",
            leftovers.len()
        )))
    })?;
    let boot = crate::exec::boot_id();
    for left in leftovers {
        let fate = docker
            .fate(&left.record.container)
            .await
            .map_err(DispatchError::Docker)?;
        let wanted = planned
            .items
            .iter()
            .any(|i| i.log_id == left.id && matches!(i.action, Action::Run(_)));
        let plan = journal::decide(
            &left.record,
            &fate,
            &boot,
            crate::exec::owner_is_alive,
            config,
        );
        if !wanted {
            // Recorded on the branch since (by another runner), or gone from the inbox.
            if plan != journal::Recovery::Busy {
                tracing::warn!(id = %left.id, container = %left.record.container, "dropping an unfinished attempt whose request is no longer pending");
                docker.remove(&left.record.container).await;
                let _ = std::fs::remove_dir_all(&left.dir);
            }
            continue;
        }
        tracing::warn!(id = %left.id, attempt = left.record.attempt, fate = ?fate, plan = ?plan, "an earlier runner process left this attempt unfinished");
        match &plan {
            journal::Recovery::Busy => {
                out.busy.push(left.id);
                continue;
            }
            journal::Recovery::Follow(rec) => {
                out.followed.push(rec.container.clone());
                if let crate::exec::Fate::Running { owner: Some(o) }
                | crate::exec::Fate::Exited { owner: Some(o), .. } = &fate
                {
                    if let Some(pid) = o.split_once('/').and_then(|(_, p)| p.parse().ok()) {
                        out.mounted.push(pid);
                    }
                }
            }
            _ => {}
        }
        out.plans.insert(left.id, plan);
    }
    Ok(out)
}

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

/// Run one full pass against the remote.
pub async fn dispatch_once(opts: &DispatchOptions) -> Result<PassReport, DispatchError> {
    let before = crate::git::round_trips();
    // Results wait per remote: runners of several repositories may share one state dir.
    let key = remote_key(&opts.remote);
    let results_dir = opts.state_dir.join("results").join(&key);
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
    // Requests for other runners are left alone: not run, not rejected, not moved.
    planned.items.retain(|item| match &item.action {
        Action::Run(r) => match r.request.runs_on.iter().find(|l| !opts.labels.contains(l)) {
            Some(missing) => {
                let why =
                    format!("runs-on needs label `{missing}`, which this runner does not carry");
                tracing::info!(file = %item.file, "left alone: {why}");
                planned.ignored.push((item.file.clone(), why));
                false
            }
            None => true,
        },
        Action::Reject(_) => true,
    });

    let (checks_tx, reporter) = match &opts.forge {
        Some(target) => {
            let journal = Arc::new(checks::Journal::new(
                opts.state_dir.join("checks").join(&key),
            ));
            // Completed states held back until their push: released if the push happened.
            journal.release(|id| {
                Ledger::of(&config)
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
        None => (None, None),
    };
    let mirror = Arc::new(Mutex::new(mirror));
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
        auth: opts.git_auth.clone(),
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
    });
    let target = Target {
        mirror,
        branch: branch.clone(),
        config,
        identity: opts.identity.clone(),
        runner: opts.runner.clone(),
        attempts: opts.push_attempts,
        checks: checks_tx,
        auth: opts.git_auth.clone(),
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

    // Results an earlier pass executed but could not push: publish them, never run them again.
    let skip: Vec<String> = pending.iter().map(|f| f.status.id.clone()).collect();
    for f in pending {
        tracing::info!(id = %f.status.id, "publishing a result left by an earlier pass");
        record(f);
    }
    let mut queues: Vec<(String, Vec<WorkItem>)> = Vec::new();
    for item in planned
        .items
        .into_iter()
        .filter(|i| !skip.contains(&i.log_id))
    {
        match &item.action {
            Action::Reject(v) => record(run::record_rejection(&cx, &item, v)?),
            Action::Run(r) => {
                run::queued(&cx, &item, r);
                let resource = r.resource.clone();
                match queues.iter_mut().find(|(res, _)| *res == resource) {
                    Some((_, q)) => q.push(item),
                    None => queues.push((resource, vec![item])),
                }
            }
        }
    }
    let infra = run_queues(&cx, queues, &locks, opts.concurrency, record).await;

    let removals = cx
        .removals
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    for removal in removals {
        let _ = removal.await;
    }
    cx.sweep_checkouts().await;
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
        tip: Some(tip.to_string()),
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

/// Run each resource's queue in order, queues side by side up to `concurrency`; the first
/// infrastructure failure, if any. Requests after a failure in the same queue wait for a
/// later pass.
async fn run_queues(
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
async fn run_queue(
    cx: &Arc<PassContext>,
    resource: &str,
    queue: &[WorkItem],
    slots: &Semaphore,
    locks: &ResourceLocks,
    record: &(impl Fn(Finished) + Clone + Send + Sync + 'static),
    claims: &mut Option<claims::QueueClaims>,
) -> Result<(), DispatchError> {
    let mut verdicts: std::collections::HashMap<String, claims::Claimed> = Default::default();
    for (index, item) in queue.iter().enumerate() {
        let Action::Run(runnable) = &item.action else {
            continue;
        };
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
                let asks: Vec<claims::Ask> = queue[index..]
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
                    .map_err(|e| run::RunFailure::Git(e.context("failed to claim the requests")))?;
                verdicts = asks.into_iter().map(|a| a.id).zip(claimed).collect();
                *claims = Some(q);
            }
            let Some(q) = claims.as_ref() else {
                return Err(run::RunFailure::Other(anyhow::anyhow!(
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
            match verdict {
                claims::Claimed::Won(_) => {}
                claims::Claimed::TakenOver { previous, .. } => {
                    let why = format!(
                        "runner `{}` on {} stopped renewing its claim while attempt {} ran",
                        previous.runner, previous.host, previous.attempt
                    );
                    tracing::warn!("taking over: {why}");
                    recovery.get_or_insert_with(|| {
                        journal::interrupted(previous.attempt, why, &cx.config)
                    });
                }
                claims::Claimed::Done => {
                    run::abandon(cx, &item.log_id).await;
                    return Ok(Step::Recorded);
                }
                claims::Claimed::Lost(holder) => {
                    run::abandon(cx, &item.log_id).await;
                    return Ok(Step::Lost(holder));
                }
            }
            if !q.start(&item.log_id).await {
                run::abandon(cx, &item.log_id).await;
                return Ok(Step::Lost(
                    "another runner, which took its claim over while it waited".into(),
                ));
            }
            // A result of this request journaled as finished (by any process of this
            // state directory) is published, never run again; its claim stays until then.
            let results = run::ResultDir::of(&cx.results_dir, &item.log_id);
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
            let started = journal::read(&results.dir).is_some();
            q.leave(&item.log_id, done.is_err() && !started).await;
            done.map(|f| Step::Finished(Box::new(f)))
        }
        .instrument(span)
        .await;
        let again = |e: anyhow::Error| {
            e.context(format!(
                "request {} did not finish; it runs again in a later pass",
                item.log_id
            ))
        };
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
            Err(run::RunFailure::Docker(e)) => return Err(DispatchError::Docker(again(e))),
            Err(run::RunFailure::Git(e)) => return Err(DispatchError::Git(again(e))),
            Err(run::RunFailure::Other(e)) => return Err(DispatchError::Other(again(e))),
        }
    }
    Ok(())
}

/// How one queued request went.
enum Step {
    /// It reached a final state.
    Finished(Box<Finished>),
    /// The runner is stopping; it was left for a later pass.
    Stopping,
    /// Another runner recorded it meanwhile.
    Recorded,
    /// Another runner holds its claim (named).
    Lost(String),
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
