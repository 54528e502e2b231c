//! Starting a run: its objects created (files and secrets, the Job, then the Job made their
//! owner), then its pod waited for, with what Kubernetes says when it does not start.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams, PostParams};

use super::super::{Cancel, ExecError};
use super::job::Objects;
use super::{api_code, failed_condition, handler_status, KubernetesExecutor};

/// Waiting reasons of a pod's container that mean its image will not come.
const IMAGE_ERRORS: &[&str] = &[
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ImageInspectError",
    "RegistryUnavailable",
];
/// Waiting reasons that mean the container cannot be made at all.
const CONTAINER_ERRORS: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// How waiting for a Job's pod to start ended.
pub(super) enum Start {
    /// Its pod runs (or already ran): its name.
    Pod(String),
    /// It cannot start: why.
    Unstartable(ExecError),
    /// The runner is stopping.
    Cancelled,
}

impl KubernetesExecutor {
    /// Create the objects: files and secrets first, then the Job, then make the Job their
    /// owner. Objects of the same names are a dead run's: removed first.
    pub(super) async fn create(&self, o: &Objects) -> anyhow::Result<Job> {
        match self.create_once(o).await {
            Err(e) if e.downcast_ref::<kube::Error>().and_then(api_code) == Some(409) => {
                let name = o.job.metadata.name.clone().unwrap_or_default();
                tracing::warn!(job = %name, "a Job of this name is left from an earlier run: replacing it");
                self.purge(&name).await;
                self.gone(&name, Duration::from_secs(120)).await?;
                self.create_once(o).await
            }
            other => other,
        }
    }

    async fn create_once(&self, o: &Objects) -> anyhow::Result<Job> {
        let pp = PostParams::default();
        let name = o.job.metadata.name.clone().unwrap_or_default();
        for cm in &o.config_maps {
            self.config_maps().create(&pp, cm).await?;
        }
        if let Some(s) = &o.secret {
            self.secrets().create(&pp, s).await?;
        }
        let job = self.jobs().create(&pp, &o.job).await?;
        let owner = serde_json::json!({ "metadata": { "ownerReferences": [{
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": job.metadata.uid,
        }]}});
        let patch = Patch::Merge(&owner);
        let pp = PatchParams::default();
        let owned = futures_util::future::join_all(
            o.config_maps
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .map(|n| {
                    let api = self.config_maps();
                    let patch = &patch;
                    let pp = &pp;
                    async move { api.patch(&n, pp, patch).await.map(|_| ()) }
                }),
        )
        .await;
        for r in owned {
            r.context("failed to make the Job the owner of its files")?;
        }
        if let Some(n) = o.secret.as_ref().and_then(|s| s.metadata.name.clone()) {
            self.secrets()
                .patch(&n, &pp, &patch)
                .await
                .context("failed to make the Job the owner of its secrets")?;
        }
        Ok(job)
    }

    /// Wait for Job `job`'s pod to start, at most the start timeout.
    pub(super) async fn await_start(
        &self,
        job: &str,
        cancel: &mut Cancel<'_>,
    ) -> anyhow::Result<Start> {
        let started = tokio::time::Instant::now();
        let until = started + self.cfg.start_timeout;
        let mut last = String::from("no pod was made");
        loop {
            if let Some(pod) = self.pod_of(job).await? {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let status = pod.status.clone().unwrap_or_default();
                let handler = handler_status(&pod);
                let state = handler.and_then(|c| c.state.clone()).unwrap_or_default();
                if state.running.is_some() || state.terminated.is_some() {
                    return Ok(Start::Pod(name));
                }
                if let Some(w) = state.waiting {
                    let reason = w.reason.unwrap_or_default();
                    let message = w.message.unwrap_or_default();
                    let why = format!("{reason}: {message}");
                    if IMAGE_ERRORS.contains(&reason.as_str()) {
                        return Ok(Start::Unstartable(ExecError::ImageUnavailable(format!(
                            "the cluster cannot run image `{}` ({})",
                            handler.map(|c| c.image.as_str()).unwrap_or(""),
                            why.trim_end_matches([':', ' '])
                        ))));
                    }
                    if CONTAINER_ERRORS.contains(&reason.as_str()) {
                        return Ok(Start::Unstartable(ExecError::Unstartable(format!(
                            "the cluster could not start the handler's container ({})",
                            why.trim_end_matches([':', ' '])
                        ))));
                    }
                    last = format!(
                        "its container is waiting: {}",
                        why.trim_end_matches([':', ' '])
                    );
                }
                if status.phase.as_deref() == Some("Failed") {
                    return Ok(Start::Unstartable(ExecError::Unstartable(format!(
                        "its pod failed before the handler started ({}: {})",
                        status.reason.unwrap_or_default(),
                        status.message.unwrap_or_default()
                    ))));
                }
                if let Some(c) = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                {
                    last = format!(
                        "not scheduled: {}",
                        c.message.or(c.reason).unwrap_or_default()
                    );
                }
            } else if let Some(why) = self.job_failed(job).await? {
                return Ok(Start::Unstartable(ExecError::Unstartable(format!(
                    "the Job failed before its pod started: {why}"
                ))));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Start::Unstartable(ExecError::Unstartable(format!(
                    "the handler's pod did not start within {} (executor.kubernetes.start_timeout): {last}",
                    crate::contract::units::format_duration(self.cfg.start_timeout)
                ))));
            }
            // Quick at first: most pods start within a second or two.
            let pause = if started.elapsed() < Duration::from_secs(3) {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut *cancel => return Ok(Start::Cancelled),
            }
        }
    }

    /// Why Job `job` failed, if it did (`DeadlineExceeded: …`); an absent Job is an error.
    async fn job_failed(&self, job: &str) -> anyhow::Result<Option<String>> {
        let Some(j) = self.jobs().get_opt(job).await? else {
            anyhow::bail!("Job {job} was deleted by someone else");
        };
        Ok(failed_condition(&j))
    }
}
