//! Starting a container: created from its spec, attached before it starts so no output is
//! lost, started, then followed to its end.

use std::collections::HashMap;

use anyhow::Context;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder};
use futures_util::StreamExt;

use super::super::Executor;
use super::super::{us_since, ContainerSpec, ExecError, OutputEvent, Phases, RunOutcome};
use super::watch::Watch;
use super::DockerExecutor;

impl DockerExecutor {
    pub(super) async fn run_inner(
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
        let outcome = self
            .watch(
                &watch,
                output.map(|c| c.map(|c| (c, None))),
                on_output,
                cancel,
            )
            .await?;
        Ok(outcome.after_setup(phases))
    }
}

pub(super) fn body(spec: &ContainerSpec) -> ContainerCreateBody {
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
        env: Some(
            spec.env
                .iter()
                .cloned()
                .chain(spec.secret_env.iter().map(|(k, v)| format!("{k}={v}")))
                .collect(),
        ),
        labels: Some(spec.labels.clone()),
        user: Some(spec.user.clone()),
        working_dir: Some(spec.working_dir.clone()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some(spec.network.clone()),
            runtime: spec.runtime.clone(),
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
