//! The ONLY place that talks to Docker (through bollard): the first [`Executor`].
//!
//! A container is created, attached before it starts (no output is lost), watched to its end
//! with the timeout and the cap, and left for the engine to remove once its result is
//! recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, CreateContainerOptionsBuilder,
    CreateImageOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::lines::LineSplitter;
use super::{
    owner_is_alive, us_since, Cancel, ContainerSpec, ExecError, Executor, Fate, OutputEvent,
    Phases, Resume, RunOutcome, Stream, LABEL_MANAGED, LABEL_OWNER, LABEL_RUNNER,
};

/// A container being followed to its end.
struct Watch<'a> {
    name: &'a str,
    ends_at: tokio::time::Instant,
    grace: Duration,
    cap: u64,
}

/// Split the engine's timestamp off a log chunk (`timestamps=true` puts RFC 3339 with
/// nanoseconds and a space before each line); the time in Unix nanoseconds, if it parsed.
fn stamped(chunk: bollard::container::LogOutput) -> (bollard::container::LogOutput, Option<i128>) {
    use bollard::container::LogOutput as L;
    let split = |message: bytes::Bytes| -> (bytes::Bytes, Option<i128>) {
        let Some(space) = message.iter().position(|b| *b == b' ') else {
            return (message, None);
        };
        let ts = std::str::from_utf8(&message[..space]).ok().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        match ts {
            Some(ts) => (message.slice(space + 1..), Some(ts.unix_timestamp_nanos())),
            None => (message, None),
        }
    };
    match chunk {
        L::StdOut { message } => {
            let (message, ts) = split(message);
            (L::StdOut { message }, ts)
        }
        L::StdErr { message } => {
            let (message, ts) = split(message);
            (L::StdErr { message }, ts)
        }
        L::Console { message } => {
            let (message, ts) = split(message);
            (L::Console { message }, ts)
        }
        other => (other, None),
    }
}

/// Longest an image build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long an unexplained SIGKILL waits for the engine's OOM event.
const OOM_PATIENCE: Duration = Duration::from_secs(3);

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

    async fn run_inner(
        &self,
        spec: &ContainerSpec,
        on_started: impl FnOnce(),
        on_output: impl FnMut(OutputEvent) + Send,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<RunOutcome, ExecError> {
        let mut phases = Phases::default();
        let t = std::time::Instant::now();
        let create = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(create.clone()), body(spec))
            .await;
        if let Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) = created
        {
            // A container of the same name is a leftover of ours from a dead run.
            self.remove(&spec.name).await;
            self.docker
                .create_container(Some(create), body(spec))
                .await
                .with_context(|| format!("failed to create container {}", spec.name))?;
        } else {
            created.with_context(|| format!("failed to create container {}", spec.name))?;
        }
        phases.create = us_since(t);
        let t = std::time::Instant::now();
        let attach = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        let output = self
            .docker
            .attach_container(&spec.name, Some(attach))
            .await
            .with_context(|| format!("failed to attach to container {}", spec.name))?
            .output;
        phases.attach = us_since(t);
        let t = std::time::Instant::now();
        self.docker
            .start_container(&spec.name, None)
            .await
            .with_context(|| format!("failed to start container {}", spec.name))?;
        phases.start = us_since(t);
        on_started();
        let ends_at = tokio::time::Instant::now() + spec.timeout;
        let watch = Watch {
            name: &spec.name,
            ends_at,
            grace: spec.grace,
            cap: spec.output_cap,
        };
        let mut outcome = self
            .watch(
                &watch,
                output.map(|c| c.map(|c| (c, None))),
                on_output,
                cancel,
            )
            .await?;
        outcome.phases = Phases {
            run: outcome.phases.run,
            wait: outcome.phases.wait,
            ..phases
        };
        Ok(outcome)
    }

    /// Stream `output` until it ends, enforcing the deadline and `cancel`; then wait for the
    /// exit and read the outcome.
    async fn watch(
        &self,
        w: &Watch<'_>,
        output: impl futures_util::Stream<
            Item = Result<(bollard::container::LogOutput, Option<i128>), bollard::errors::Error>,
        >,
        mut on_output: impl FnMut(OutputEvent) + Send,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<RunOutcome> {
        tokio::pin!(cancel);
        tokio::pin!(output);
        let mut lines = LineSplitter::new(w.cap);
        let mut outcome = RunOutcome::default();
        let running = std::time::Instant::now();
        let deadline = tokio::time::sleep_until(w.ends_at);
        tokio::pin!(deadline);
        let mut stopper: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok((chunk, _))) => {
                        let (stream, bytes) = match chunk {
                            bollard::container::LogOutput::StdErr { message } => (Stream::Stderr, message),
                            bollard::container::LogOutput::StdOut { message }
                            | bollard::container::LogOutput::Console { message } => (Stream::Stdout, message),
                            bollard::container::LogOutput::StdIn { .. } => continue,
                        };
                        lines.push(stream, &bytes, &mut on_output);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(container = %w.name, error = %e, "output stream broke");
                        break;
                    }
                    None => break,
                },
                // A timeout and a cancellation take the same path: SIGTERM, grace, SIGKILL.
                _ = &mut deadline, if stopper.is_none() => {
                    outcome.timed_out = true;
                    stopper = Some(self.stopper(w.name, w.grace));
                }
                _ = &mut cancel, if stopper.is_none() => {
                    outcome.cancelled = true;
                    stopper = Some(self.stopper(w.name, w.grace));
                }
            }
        }
        lines.finish(&mut on_output);
        outcome.output_bytes = lines.seen;
        outcome.truncated = lines.truncated;
        outcome.phases.run = us_since(running);
        let waiting = std::time::Instant::now();

        // Output closed: the process is gone or closed its streams; wait for the exit within
        // what is left of the timeout, then stop it the hard way.
        let mut exited: Option<i64> = None;
        let wait = async {
            let mut wait = self.docker.wait_container(w.name, None);
            exited = match wait.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Some(code)
                }
                _ => None,
            };
        };
        let remaining = if outcome.timed_out || outcome.cancelled {
            w.grace + Duration::from_secs(5)
        } else {
            w.ends_at
                .saturating_duration_since(tokio::time::Instant::now())
        };
        if tokio::time::timeout(remaining, wait).await.is_err() && stopper.is_none() {
            outcome.timed_out = true;
            let opts = StopContainerOptionsBuilder::default()
                .t(w.grace.as_secs() as i32)
                .build();
            let _ = self.docker.stop_container(w.name, Some(opts)).await;
        }
        if let Some(s) = stopper {
            let _ = s.await;
        }
        let stopped_by_us = outcome.timed_out || outcome.cancelled;
        // A clean exit, as the wait says, needs no more; any other end gets the engine's
        // full account (was it the OOM killer?).
        if exited == Some(0) && !stopped_by_us {
            outcome.exit_code = Some(0);
            outcome.phases.wait = us_since(waiting);
            return Ok(outcome);
        }
        let state = self.state_of(w.name).await?;
        outcome.exit_code = state.exit_code;
        outcome.oom_killed = state.oom_killed.unwrap_or(false);
        // SIGKILLed by nobody we know of: the kernel's OOM killer, most likely. The engine
        // sets its OOM flag only when its OOM event comes before the exit; one that comes
        // after (seen on a busy host) is reported as an `oom` event alone. Look for it.
        if !stopped_by_us && state.exit_code == Some(137) && !outcome.oom_killed {
            outcome.oom_killed = self
                .oom_reported(w.name, state.started_at.as_deref(), OOM_PATIENCE)
                .await;
        }
        outcome.phases.wait = us_since(waiting);
        Ok(outcome)
    }

    /// Whether the engine reported an OOM kill in container `name` since it started
    /// (`started_at`, as the engine wrote it), waiting up to `patience` for the event.
    async fn oom_reported(&self, name: &str, started_at: Option<&str>, patience: Duration) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The engine takes Unix seconds here (not RFC 3339).
        let since = started_at
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(now.saturating_sub(3600), |t| {
                u64::try_from(t.unix_timestamp()).unwrap_or(0)
            })
            .to_string();
        let until = (now + patience.as_secs() + 1).to_string();
        let filters = HashMap::from([("container", vec![name]), ("event", vec!["oom"])]);
        let opts = EventsOptionsBuilder::default()
            .since(&since)
            .until(&until)
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(opts));
        matches!(
            tokio::time::timeout(patience, events.next()).await,
            Ok(Some(Ok(_)))
        )
    }

    /// What the engine says of container `name` now.
    async fn state_of(&self, name: &str) -> anyhow::Result<bollard::models::ContainerState> {
        Ok(self
            .docker
            .inspect_container(name, None)
            .await
            .with_context(|| format!("failed to inspect container {name}"))?
            .state
            .unwrap_or_default())
    }

    /// Stop container `name` in the background: SIGTERM, its grace period, then SIGKILL.
    fn stopper(&self, name: &str, grace: Duration) -> tokio::task::JoinHandle<()> {
        let docker = self.docker.clone();
        let name = name.to_string();
        let grace = grace.as_secs().min(i32::MAX as u64) as i32;
        tokio::spawn(async move {
            let opts = StopContainerOptionsBuilder::default().t(grace).build();
            if let Err(e) = docker.stop_container(&name, Some(opts)).await {
                tracing::warn!(container = %name, error = %e, "failed to stop container");
            }
        })
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
}

fn body(spec: &ContainerSpec) -> ContainerCreateBody {
    let binds = spec
        .mounts
        .iter()
        .map(|m| {
            format!(
                "{}:{}:{}",
                m.source.display(),
                m.target,
                if m.read_only { "ro" } else { "rw" }
            )
        })
        .collect();
    let tmpfs = HashMap::from([(
        "/tmp".to_string(),
        format!("rw,nosuid,nodev,size={},mode=1777", spec.tmpfs_bytes),
    )]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        // The handler is the entrypoint: an image's own ENTRYPOINT or CMD never runs instead.
        entrypoint: Some(spec.cmd.clone()),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone()),
        user: Some(spec.user.clone()),
        working_dir: Some(spec.working_dir.clone()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some(spec.network.clone()),
            readonly_rootfs: Some(spec.read_only_root),
            tmpfs: Some(tmpfs),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory: Some(spec.memory as i64),
            memory_swap: Some(spec.memory as i64),
            pids_limit: Some(spec.pids),
            nano_cpus: Some(spec.nano_cpus),
            init: Some(true),
            // Output is read through attach; the engine's own bounded copy is what a runner
            // restarted while the handler ran replays the output it missed from.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "16m".to_string()),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
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
