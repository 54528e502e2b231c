//! Where handlers run: the [`Executor`] seam the engine owns, and what crosses it.
//!
//! The engine describes a run as a [`ContainerSpec`] (plain data, built by the pure [`spec`]
//! module) and gets back a [`RunOutcome`]; output reaches it line by line as the container
//! writes. [`docker`] is the first implementation and the ONLY code that talks to Docker;
//! a second runtime is a new module here, not a change to the engine.

pub mod docker;
#[cfg(test)]
pub(crate) mod fake;
pub mod kubernetes;
mod lines;
mod owner;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use docker::DockerExecutor;
pub use kubernetes::KubernetesExecutor;
pub use owner::{boot_id, is_runner_process, owner_alive, owner_is_alive, owner_label};
pub use spec::{ContainerSpec, Mount};

/// Label every container of ours carries.
pub const LABEL_MANAGED: &str = "io.codex-runner.managed";
/// Label naming the runner that created the container.
pub const LABEL_RUNNER: &str = "io.codex-runner.runner";
/// Label naming the request.
pub const LABEL_REQUEST: &str = "io.codex-runner.request";
/// Label: the runner process that made the container, as `<boot id>/<pid>`, so a runner
/// starting later can tell a dead runner's leftovers from a live sibling's containers.
pub const LABEL_OWNER: &str = "io.codex-runner.owner";

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The name written to the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Output as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// One line (without its newline); very long lines arrive in pieces.
    Line(Stream, String),
    /// The cap was reached; later output is dropped.
    Truncated {
        /// The cap in bytes.
        cap: u64,
    },
}

/// How a container run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit code, when the process exited.
    pub exit_code: Option<i64>,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// The timeout fired and the container was stopped.
    pub timed_out: bool,
    /// The runner was stopping and the container was stopped.
    pub cancelled: bool,
    /// Bytes of output seen (including dropped ones).
    pub output_bytes: u64,
    /// Output passed the cap.
    pub truncated: bool,
    /// How long each call to the engine took.
    pub phases: Phases,
    /// Why there is no exit code, when the runtime knows (the pod was deleted under it).
    pub lost: Option<String>,
}

/// How long the engine took for each step of one container's life, in microseconds (the
/// benchmark sets them beside `docker run`). `run` is from the start to the end of output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    pub create: u64,
    pub attach: u64,
    pub start: u64,
    pub run: u64,
    /// From the end of output to the exit code (the wait, and an inspect when needed).
    pub wait: u64,
    /// Removing it, once its result is recorded (set by the caller).
    pub remove: u64,
}

impl RunOutcome {
    /// This outcome, its run and wait phases measured while following, with the phases
    /// before it (create, attach, start) from `setup`.
    pub fn after_setup(mut self, setup: Phases) -> Self {
        self.phases = Phases {
            run: self.phases.run,
            wait: self.phases.wait,
            ..setup
        };
        self
    }
}

/// Microseconds since `t`.
pub fn us_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What became of a container, seen by a runner that did not start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// No such container: never created, or removed since.
    Missing,
    /// Created but never started.
    Created,
    /// Still running.
    Running {
        /// Its owner label (`<boot id>/<pid>`).
        owner: Option<String>,
    },
    /// Ended.
    Exited {
        /// Its owner label (`<boot id>/<pid>`).
        owner: Option<String>,
        /// The exit code the engine recorded.
        exit_code: Option<i64>,
    },
}

/// A container a dead runner process started, to be followed to its end.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The container's name.
    pub name: String,
    /// Where the dead process's log stops (Unix milliseconds): earlier output is not replayed.
    pub after_ms: u64,
    /// What is left of its timeout.
    pub remaining: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Output still allowed.
    pub cap: u64,
}

/// Failures of the executor, split by what the caller does about them.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The image can be neither found nor pulled nor built: the request is rejected.
    #[error("image unavailable: {0}")]
    ImageUnavailable(String),
    /// The runtime cannot start this run at all (the cluster cannot schedule it, its files
    /// cannot be carried): the request fails with the reason.
    #[error("cannot start: {0}")]
    Unstartable(String),
    /// The engine failed: infrastructure, the request is retried in a later pass.
    #[error(transparent)]
    Engine(#[from] anyhow::Error),
}

/// Stopping a run early: it completes when the runner wants the container stopped the way a
/// timeout stops it.
pub type Cancel<'a> = futures_util::future::BoxFuture<'a, ()>;

/// A container runtime the engine runs handlers on. One value serves a whole pass; every
/// container it creates is labelled as ours ([`LABEL_MANAGED`]) and outlives its request only
/// until the engine removes it.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Make `reference` present, pulling it if it is not; a reference that can be neither
    /// found nor pulled is [`ExecError::ImageUnavailable`].
    async fn ensure_image(&self, reference: &str) -> Result<(), ExecError>;

    /// Build `tag` from the directory `context` unless an image with that tag exists.
    async fn ensure_built(&self, tag: &str, context: &Path) -> Result<(), ExecError>;

    /// Run one container to its end, streaming its output to `on_output`.
    ///
    /// `on_started` is called once the container runs. The container is kept after it ends
    /// (so a runner that dies before recording the outcome can read it again) and must be
    /// removed with [`Executor::remove`]; one that never started is removed here. When
    /// `cancel` completes, the container is stopped the way a timeout stops it (SIGTERM, the
    /// grace period, SIGKILL) and the outcome says `cancelled`.
    async fn run(
        &self,
        spec: &ContainerSpec,
        on_started: &mut (dyn FnMut() + Send),
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError>;

    /// Follow a container a dead runner process started, from where that process's log
    /// stops ([`Resume::after_ms`]); the timeout still counts from the original start.
    async fn resume(
        &self,
        resume: &Resume,
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError>;

    /// What became of a container a dead runner process left, found by name.
    async fn fate(&self, name: &str) -> anyhow::Result<Fate>;

    /// Remove a container (stopping it first if it runs); a missing one is fine.
    async fn remove(&self, name: &str);

    /// Stop and remove the containers `runner` left when a process of it died (owned by no
    /// live codex-runner of this boot), except those in `keep`; their names.
    async fn reap_orphans(
        &self,
        runner: &str,
        grace: Duration,
        keep: &[String],
    ) -> anyhow::Result<Vec<String>>;

    /// Names of the containers of ours that exist now (any state), optionally of one runner.
    async fn managed_containers(&self, runner: Option<&str>) -> anyhow::Result<Vec<String>>;

    /// The host directories mounted into containers of any codex-runner on this runtime.
    async fn mount_sources(&self) -> anyhow::Result<Vec<PathBuf>>;

    /// The OCI runtimes a handler may name here (`runc`, `runsc`; a cluster's
    /// RuntimeClasses).
    async fn runtimes(&self) -> anyhow::Result<Vec<String>>;

    /// Whether a run goes on when the runner's host restarts (a cluster's Jobs do; a local
    /// engine's containers do not), so that a runner back from a reboot follows it.
    fn outlives_host(&self) -> bool {
        false
    }
}

/// Check that `executor` has every runtime the host config allows handlers to name
/// (`limits.runtimes`), so a missing one stops the runner at its start, not a request later.
pub async fn check_runtimes(executor: &dyn Executor, allowed: &[String]) -> anyhow::Result<()> {
    if allowed.is_empty() {
        return Ok(());
    }
    let have = executor.runtimes().await?;
    let missing: Vec<&String> = allowed.iter().filter(|r| !have.contains(r)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
    anyhow::bail!(
        "limits.runtimes names {}, which the container engine does not have (it has: {}); register it with the engine (Docker: \"runtimes\" in /etc/docker/daemon.json; Kubernetes: a RuntimeClass) or remove it from the host config",
        names.join(", "),
        have.join(", ")
    )
}

/// Which executor the engine connects to, from the host config.
#[derive(Clone, Default)]
pub enum ExecutorChoice {
    /// The local Docker engine (`DOCKER_HOST` or the local socket).
    #[default]
    Docker,
    /// A Kubernetes cluster.
    Kubernetes(Arc<kubernetes::KubernetesConfig>),
    /// An executor the caller made (an embedding program's own runtime; the engine's tests).
    Given(Arc<dyn Executor>),
}

impl std::fmt::Debug for ExecutorChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecutorChoice::Docker => "docker",
            ExecutorChoice::Kubernetes(_) => "kubernetes",
            ExecutorChoice::Given(_) => "given",
        })
    }
}

impl From<crate::config::ExecutorConfig> for ExecutorChoice {
    fn from(config: crate::config::ExecutorConfig) -> Self {
        match config {
            crate::config::ExecutorConfig::Docker => ExecutorChoice::Docker,
            crate::config::ExecutorConfig::Kubernetes(k) => ExecutorChoice::Kubernetes(Arc::new(k)),
        }
    }
}

impl ExecutorChoice {
    /// Connect to the chosen executor.
    pub async fn connect(&self) -> anyhow::Result<Arc<dyn Executor>> {
        match self {
            ExecutorChoice::Docker => Ok(Arc::new(DockerExecutor::connect().await?)),
            ExecutorChoice::Kubernetes(k) => Ok(Arc::new(KubernetesExecutor::connect(k).await?)),
            ExecutorChoice::Given(e) => Ok(e.clone()),
        }
    }
}

/// A host directory made readable for the container user.
pub fn ensure_world_readable_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir.to_path_buf())
}
