//! The ONLY place that talks to Docker (through bollard): the first [`Executor`].
//!
//! A container is created, attached before it starts (no output is lost), watched to its end
//! with the timeout and the cap, and left for the engine to remove once its result is
//! recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

mod start;
mod watch;

use watch::{stamped, Watch};

use super::{
    owner_is_alive, Cancel, ContainerSpec, ExecError, Executor, Fate, OutputEvent, Resume,
    RunOutcome, LABEL_MANAGED, LABEL_OWNER, LABEL_RUNNER,
};

/// Longest an image build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A connection to the Docker engine.
#[derive(Clone)]
pub struct DockerExecutor {
    docker: Docker,
}

impl DockerExecutor {
    /// Connect through `DOCKER_HOST` or the local socket and agree on an API version.
    pub async fn connect() -> anyhow::Result<Self> {
        let docker =
            Docker::connect_with_local_defaults().context("failed to find the docker socket")?;
        let docker = docker
            .negotiate_version()
            .await
            .context("failed to reach the docker engine (is dockerd running?)")?;
        Ok(DockerExecutor { docker })
    }

    /// The engine's version string.
    pub async fn version(&self) -> anyhow::Result<String> {
        let v = self
            .docker
            .version()
            .await
            .context("failed to ask the docker engine its version")?;
        Ok(format!(
            "{} (API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }

    /// Whether `reference` is present locally (no pull).
    pub async fn ensure_image_present(&self, reference: &str) -> anyhow::Result<()> {
        self.docker
            .inspect_image(reference)
            .await
            .map(|_| ())
            .with_context(|| format!("image {reference} is not on this host"))
    }

    /// The containers labelled as ours (any state), optionally of one runner.
    async fn ours(
        &self,
        runner: Option<&str>,
    ) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
        let mut label = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(r) = runner {
            label.push(format!("{LABEL_RUNNER}={r}"));
        }
        let filters: HashMap<String, Vec<String>> = HashMap::from([("label".to_string(), label)]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .context("failed to list containers")
    }
}

#[async_trait::async_trait]
impl Executor for DockerExecutor {
    /// Make sure `reference` is present locally, pulling it if not.
    async fn ensure_image(&self, reference: &str) -> Result<(), ExecError> {
        if self.docker.inspect_image(reference).await.is_ok() {
            return Ok(());
        }
        let opts = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .build();
        let pull = async {
            let mut stream = self.docker.create_image(Some(opts), None, None);
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| e.to_string())?;
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    return Err(err);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(300), pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ExecError::ImageUnavailable(format!(
                "`{reference}` is not on this host and could not be pulled: {e}"
            ))),
            Err(_) => Err(ExecError::ImageUnavailable(format!(
                "`{reference}` is not on this host and pulling it took over 300s"
            ))),
        }
    }

    /// Build `tag` from the directory `context` unless an image with that tag exists.
    async fn ensure_built(&self, tag: &str, context: &Path) -> Result<(), ExecError> {
        if self.docker.inspect_image(tag).await.is_ok() {
            return Ok(());
        }
        let context = context.to_path_buf();
        let tar = tokio::task::spawn_blocking(move || tar_dir(&context))
            .await
            .context("failed to join the tar task")??;
        let opts = BuildImageOptionsBuilder::default()
            .t(tag)
            .rm(true)
            .forcerm(true)
            .pull("false")
            .build();
        let build = async {
            let mut stream =
                self.docker
                    .build_image(opts, None, Some(bollard::body_full(tar.into())));
            let mut last = String::new();
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| e.to_string())?;
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    return Err(err);
                }
                if let Some(s) = info.stream.filter(|s| !s.trim().is_empty()) {
                    last = s.trim().to_string();
                }
            }
            Ok(last)
        };
        let last = match tokio::time::timeout(BUILD_TIMEOUT, build).await {
            Ok(Ok(last)) => last,
            Ok(Err(e)) => {
                return Err(ExecError::ImageUnavailable(format!(
                    "building `{tag}` failed: {e}"
                )))
            }
            Err(_) => {
                return Err(ExecError::ImageUnavailable(format!(
                    "building `{tag}` took longer than {}s",
                    BUILD_TIMEOUT.as_secs()
                )))
            }
        };
        tracing::info!(image = tag, last = %last, "built image");
        Ok(())
    }

    async fn run(
        &self,
        spec: &ContainerSpec,
        on_started: &mut (dyn FnMut() + Send),
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let mut started = false;
        let on_started = || {
            started = true;
            on_started();
        };
        let result = self.run_inner(spec, on_started, on_output, cancel).await;
        // A container that ran is left for the journal's recovery to read; one that never
        // started is of no use to anyone.
        if result.is_err() && !started {
            self.remove(&spec.name).await;
        }
        result
    }

    /// Remove a container (stopping it first if it runs); a missing one is fine.
    async fn remove(&self, name: &str) {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => tracing::debug!(container = name, "removed container"),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => tracing::warn!(container = name, error = %e, "failed to remove container"),
        }
    }

    /// Output the engine stamped after `after_ms` (Unix milliseconds) is replayed from its
    /// log, then followed.
    ///
    /// The engine stamps lines to the nanosecond, the run log to the millisecond: a line in
    /// the dead process's last millisecond may be logged twice, or missed if it was still in
    /// flight. Output beyond what the engine keeps of an unattended container (16 MiB) is lost.
    async fn resume(
        &self,
        r: &Resume,
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let (name, after_ms) = (r.name.as_str(), r.after_ms);
        let opts = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(after_ms / 1000).unwrap_or(0))
            .build();
        let output = self.docker.logs(name, Some(opts)).filter_map(move |item| {
            std::future::ready(match item {
                Ok(chunk) => match stamped(chunk) {
                    // Written before the dead runner's last log line: already there.
                    (_, Some(ns)) if ns / 1_000_000 <= after_ms as i128 => None,
                    (chunk, ns) => Some(Ok((chunk, ns))),
                },
                Err(e) => Some(Err(e)),
            })
        });
        let watch = Watch {
            name,
            ends_at: tokio::time::Instant::now() + r.remaining,
            grace: r.grace,
            cap: r.cap,
        };
        Ok(self.watch(&watch, output, on_output, cancel).await?)
    }

    /// What became of a container a dead runner process left, found by name.
    async fn fate(&self, name: &str) -> anyhow::Result<Fate> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let owner = c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(LABEL_OWNER).cloned());
                let state = c.state.unwrap_or_default();
                use bollard::models::ContainerStateStatusEnum as S;
                Ok(match state.status {
                    Some(S::CREATED) | None => Fate::Created,
                    Some(S::RUNNING | S::PAUSED | S::RESTARTING) => Fate::Running { owner },
                    Some(_) => Fate::Exited {
                        owner,
                        exit_code: state.exit_code,
                    },
                })
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(Fate::Missing),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("failed to inspect container {name}")))
            }
        }
    }

    /// Remove the containers `runner` left behind when a process of it died: labelled as ours
    /// and this runner's, but owned by no live codex-runner of this boot. They are stopped
    /// (SIGTERM, `grace`, SIGKILL) and removed; their names are returned. Containers named in
    /// `keep` are being followed by this pass (their attempts are journaled) and stay.
    async fn reap_orphans(
        &self,
        runner: &str,
        grace: Duration,
        keep: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let list = self.ours(Some(runner)).await?;
        let orphans: Vec<String> = list
            .into_iter()
            .filter(|c| {
                let owner = c.labels.as_ref().and_then(|l| l.get(LABEL_OWNER));
                !owner_is_alive(owner.map(String::as_str))
            })
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !keep.contains(n))
            .collect();
        let t = grace.as_secs().min(i32::MAX as u64) as i32;
        futures_util::future::join_all(orphans.iter().map(|name| async move {
            tracing::warn!(container = %name, "removing a container left by a dead runner; its request runs again");
            let opts = StopContainerOptionsBuilder::default().t(t).build();
            let _ = self.docker.stop_container(name, Some(opts)).await;
            self.remove(name).await;
        }))
        .await;
        Ok(orphans)
    }

    /// Names of the containers of ours that exist now (any state), optionally of one runner.
    async fn managed_containers(&self, runner: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(self
            .ours(runner)
            .await?
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }

    /// The host directories mounted into containers of any codex-runner on this engine.
    async fn mount_sources(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self
            .ours(None)
            .await?
            .into_iter()
            .flat_map(|c| c.mounts.unwrap_or_default())
            .filter_map(|m| m.source.map(PathBuf::from))
            .collect())
    }

    async fn runtimes(&self) -> anyhow::Result<Vec<String>> {
        let info = self
            .docker
            .info()
            .await
            .context("failed to ask the Docker engine what it runs")?;
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        Ok(names)
    }
}

fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .with_context(|| format!("failed to pack the build context {}", dir.display()))?;
    builder
        .into_inner()
        .context("failed to finish the build context")
}
