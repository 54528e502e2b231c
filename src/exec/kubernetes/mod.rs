//! The ONLY place that talks to Kubernetes (through kube-rs): the second [`Executor`]. Each
//! run is one `batch/v1` Job whose pod gets the checkout and the request through ConfigMaps
//! and its secrets through a Secret, all owned by the Job so they go with it. Output is read
//! from the pod's log as it is written; the runner enforces the timeout and cancels by
//! deleting the Job (its pod gets SIGTERM, the grace period, SIGKILL).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::AsyncReadExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

mod ending;
pub mod job;
pub mod payload;
pub mod settings;
mod stamps;

pub use settings::{KubernetesConfig, KubernetesFile};

use super::lines::LineSplitter;
use super::{
    owner_is_alive, us_since, Cancel, ContainerSpec, ExecError, Executor, Fate, OutputEvent,
    Phases, Resume, RunOutcome, Stream,
};
use ending::{Ended, Ending};
use job::{job_name, label_value, Objects, CONTAINER, JOB, MANAGED, NAME, OWNER, RUNNER};
use stamps::Stamps;

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

/// What the runner does in its namespace: (API group, resource, verbs). The Role in
/// docs/kubernetes/rbac.yaml grants exactly this; `verify` checks it.
pub const NEEDED: &[(&str, &str, &[&str])] = &[
    ("batch", "jobs", &["create", "get", "list", "delete"]),
    ("", "pods", &["get", "list", "watch"]),
    ("", "pods/log", &["get"]),
    (
        "",
        "configmaps",
        &["create", "list", "patch", "delete", "deletecollection"],
    ),
    (
        "",
        "secrets",
        &["create", "list", "patch", "delete", "deletecollection"],
    ),
];

/// A connection to a Kubernetes API server, for one namespace.
#[derive(Clone)]
pub struct KubernetesExecutor {
    client: kube::Client,
    namespace: String,
    cfg: Arc<KubernetesConfig>,
}

/// How waiting for a Job's pod to start ended.
enum Start {
    /// Its pod runs (or already ran): its name.
    Pod(String),
    /// It cannot start: why.
    Unstartable(ExecError),
    /// The runner is stopping.
    Cancelled,
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl KubernetesExecutor {
    /// Connect with the kubeconfig the settings name (else `$KUBECONFIG`, `~/.kube/config`,
    /// or the pod's service account) and check that the API server answers.
    pub async fn connect(cfg: &KubernetesConfig) -> anyhow::Result<Self> {
        // kube's TLS needs a process-wide crypto provider; another caller may have set it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = KubeConfigOptions {
            context: cfg.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &cfg.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("failed to read the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("failed to use the kubeconfig {}", path.display()))?
            }
            None if cfg.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .context("failed to use the kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
            None => kube::Config::infer()
                .await
                .context("found no Kubernetes config: set executor.kubernetes.kubeconfig, $KUBECONFIG, or run in a pod")?,
        };
        let namespace = cfg
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client =
            kube::Client::try_from(config).context("failed to set up the Kubernetes client")?;
        client
            .apiserver_version()
            .await
            .context("failed to reach the Kubernetes API server")?;
        Ok(KubernetesExecutor {
            client,
            namespace,
            cfg: Arc::new(cfg.clone()),
        })
    }

    /// The API server's version and the namespace, for `verify`.
    pub async fn describe(&self) -> anyhow::Result<String> {
        let v = self
            .client
            .apiserver_version()
            .await
            .context("failed to ask the Kubernetes API server its version")?;
        Ok(format!("{} (namespace {})", v.git_version, self.namespace))
    }

    /// What the runner may not do in its namespace, of what it needs (the Role in
    /// docs/kubernetes/rbac.yaml), as `verb resource` phrases; empty when it may do it all.
    pub async fn missing_permissions(&self) -> anyhow::Result<Vec<String>> {
        use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let mut missing = Vec::new();
        for (group, resource, verbs) in NEEDED {
            for verb in *verbs {
                let review: SelfSubjectAccessReview = serde_json::from_value(serde_json::json!({
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": { "resourceAttributes": {
                        "namespace": self.namespace,
                        "group": group,
                        "resource": resource.split('/').next().unwrap_or(resource),
                        "subresource": resource.split('/').nth(1).unwrap_or(""),
                        "verb": verb,
                    }},
                }))
                .context("failed to build an access review")?;
                let answer = api
                    .create(&PostParams::default(), &review)
                    .await
                    .context("failed to ask the API server what the runner may do")?;
                if !answer.status.is_some_and(|s| s.allowed) {
                    missing.push(format!("{verb} {resource}"));
                }
            }
        }
        Ok(missing)
    }

    /// Whether a NetworkPolicy in the namespace selects the handlers' `network: none` pods
    /// and allows them nothing; `None` when the runner may not list policies.
    pub async fn isolating_policy(&self) -> Option<bool> {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api.list(&ListParams::default()).await.ok()?;
        Some(list.items.iter().any(|p| {
            let Some(spec) = &p.spec else { return false };
            let selects = spec
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_none_or(|m| m.iter().all(|(k, v)| k == job::NETWORK && v == "none"));
            let types = spec.policy_types.clone().unwrap_or_default();
            selects
                && types.iter().any(|t| t == "Egress")
                && types.iter().any(|t| t == "Ingress")
                && spec.egress.as_ref().is_none_or(Vec::is_empty)
                && spec.ingress.as_ref().is_none_or(Vec::is_empty)
        }))
    }

    /// The namespace the Jobs go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Create the objects: files and secrets first, then the Job, then make the Job their
    /// owner. Objects of the same names are a dead run's: removed first.
    async fn create(&self, o: &Objects) -> anyhow::Result<Job> {
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

    /// Delete Job `job` (its pod gets its grace period) and the files and secrets made for it.
    async fn purge(&self, job: &str) {
        self.delete_job(job).await;
        self.delete_files(job).await;
    }

    /// Delete the ConfigMaps and the Secret made for Job `job`. Once its pod runs they are
    /// of no more use to it (a running pod keeps what it mounted), and without them no second
    /// pod of the Job can start the handler.
    async fn delete_files(&self, job: &str) {
        let lp = ListParams::default().labels(&format!("{JOB}={job}"));
        let dp = DeleteParams::default();
        if let Err(e) = self.config_maps().delete_collection(&dp, &lp).await {
            tracing::warn!(job, error = %e, "failed to delete a Job's files");
        }
        if let Err(e) = self.secrets().delete_collection(&dp, &lp).await {
            tracing::warn!(job, error = %e, "failed to delete a Job's secrets");
        }
    }

    /// Delete Job `job` with its pod (foreground: the Job goes once its pod has).
    async fn delete_job(&self, job: &str) {
        match self.jobs().delete(job, &DeleteParams::foreground()).await {
            Ok(_) => tracing::debug!(job, "deleted Job"),
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => tracing::warn!(job, error = %e, "failed to delete Job"),
        }
    }

    /// Wait until Job `job` no longer exists.
    async fn gone(&self, job: &str, within: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + within;
        while self.jobs().get_opt(job).await?.is_some() {
            if tokio::time::Instant::now() > until {
                anyhow::bail!(
                    "Job {job} was still there {}s after it was deleted",
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// The pod of Job `job`, if it has one (the newest, should the controller make two).
    async fn pod_of(&self, job: &str) -> anyhow::Result<Option<Pod>> {
        let lp = ListParams::default().labels(&format!("job-name={job}"));
        let mut pods = self
            .pods()
            .list(&lp)
            .await
            .with_context(|| format!("failed to list the pods of Job {job}"))?
            .items;
        pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        Ok(pods.pop())
    }

    /// Wait for Job `job`'s pod to start, at most the start timeout.
    async fn await_start(&self, job: &str, cancel: &mut Cancel<'_>) -> anyhow::Result<Start> {
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
                    last = format!("its container waits: {}", why.trim_end_matches([':', ' ']));
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
                        "its pod is not scheduled: {}",
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

    /// Read pod `pod`'s log from after `after` (Unix nanoseconds) until its handler ends,
    /// enforcing the deadline and `cancel`; then read how it ended.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        job: &str,
        pod: &str,
        after: Option<i128>,
        ends_at: tokio::time::Instant,
        grace: Duration,
        cap: u64,
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        mut cancel: Cancel<'_>,
    ) -> anyhow::Result<RunOutcome> {
        let mut ending = Ending::watch(self.pods(), pod);
        let mut lines = LineSplitter::new(cap);
        let mut stamps = Stamps::after(after);
        let mut outcome = RunOutcome::default();
        let running = std::time::Instant::now();
        let deadline = tokio::time::sleep_until(ends_at);
        tokio::pin!(deadline);
        let mut stopper: Option<tokio::task::JoinHandle<()>> = None;
        let mut buf = vec![0u8; 64 << 10];
        let mut emit = |lines: &mut LineSplitter, stamps: &mut Stamps, bytes: &[u8]| {
            stamps.push(bytes, &mut |text| {
                lines.push(Stream::Stdout, text, &mut |e| on_output(e))
            });
        };
        'reading: loop {
            let since = stamps.last.or(after);
            let lp = LogParams {
                container: Some(CONTAINER.into()),
                follow: true,
                timestamps: true,
                since_seconds: since.map(since_seconds),
                ..LogParams::default()
            };
            let stream = match self.pods().log_stream(pod, &lp).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(pod, error = %e, "no log stream");
                    None
                }
            };
            if let Some(stream) = stream {
                // A reconnect must not repeat what was read.
                stamps.reconnect();
                tokio::pin!(stream);
                loop {
                    tokio::select! {
                        n = stream.read(&mut buf) => match n {
                            Ok(0) => break,
                            Ok(n) => emit(&mut lines, &mut stamps, &buf[..n]),
                            Err(e) => {
                                tracing::warn!(pod, error = %e, "the pod's log stream broke");
                                break;
                            }
                        },
                        _ = &mut deadline, if stopper.is_none() => {
                            outcome.timed_out = true;
                            stopper = Some(self.stopper(job));
                        }
                        _ = &mut cancel, if stopper.is_none() => {
                            outcome.cancelled = true;
                            stopper = Some(self.stopper(job));
                        }
                        _ = ending.deleted(), if stopper.is_none() => {
                            outcome.lost = Some(lost(pod));
                            stopper = Some(self.stopper(job));
                        }
                    }
                }
            }
            // The stream ended: the handler is done, or the connection went; reconnect while
            // it runs and this runner has not stopped it.
            if stopper.is_some() {
                break 'reading;
            }
            if ending.deleting() {
                break 'reading;
            }
            if ending.now() != Ended::Running {
                break 'reading;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut deadline => {
                    outcome.timed_out = true;
                    stopper = Some(self.stopper(job));
                    break 'reading;
                }
                _ = &mut cancel => {
                    outcome.cancelled = true;
                    stopper = Some(self.stopper(job));
                    break 'reading;
                }
            }
        }
        if stopper.is_none() && ending.deleting() {
            outcome.lost = Some(lost(pod));
            stopper = Some(self.stopper(job));
        }
        lines.finish(&mut |e| on_output(e));
        outcome.output_bytes = lines.seen;
        outcome.truncated = lines.truncated;
        outcome.phases.run = us_since(running);
        let waiting = std::time::Instant::now();
        // The exit code, as the kubelet reports it (a moment after the log ends).
        let stopped = outcome.timed_out || outcome.cancelled;
        let patience = if stopped {
            grace + Duration::from_secs(10)
        } else {
            Duration::from_secs(30)
        };
        if let Ended::Exited { code, oom } = ending.wait(patience).await {
            outcome.exit_code = Some(code);
            outcome.oom_killed = oom;
        }
        if let Some(s) = stopper {
            let _ = s.await;
        }
        // Ended by the Job's own deadline (a runner that was away too long).
        if outcome.exit_code.is_none() && !stopped {
            if let Ok(Some(j)) = self.jobs().get_opt(job).await {
                outcome.timed_out =
                    failed_condition(&j).is_some_and(|why| why.starts_with("DeadlineExceeded"));
            }
        }
        outcome.phases.wait = us_since(waiting);
        Ok(outcome)
    }

    /// Delete Job `job` in the background: its pod gets SIGTERM, the grace period, SIGKILL.
    fn stopper(&self, job: &str) -> tokio::task::JoinHandle<()> {
        tracing::info!(job, "stopping the handler: deleting its Job");
        let this = self.clone();
        let job = job.to_string();
        tokio::spawn(async move { this.delete_job(&job).await })
    }

    /// Our Jobs, optionally of one runner.
    async fn ours(&self, runner: Option<&str>) -> anyhow::Result<Vec<Job>> {
        let mut selector = format!("{MANAGED}=true");
        if let Some(r) = runner {
            selector.push_str(&format!(",{RUNNER}={}", label_value(r)));
        }
        Ok(self
            .jobs()
            .list(&ListParams::default().labels(&selector))
            .await
            .context("failed to list Jobs")?
            .items)
    }
}

/// Why a run whose pod someone else deleted has no result. The Job goes at once: Kubernetes
/// 1.20's Job controller starts a new pod for one being deleted, and the handler must not run
/// twice.
fn lost(pod: &str) -> String {
    tracing::warn!(
        pod,
        "the handler's pod is being deleted by someone else; deleting its Job"
    );
    "the handler's pod was deleted by someone else while it ran (its Job was deleted so that it does not run again)".into()
}

/// The handler container's status in `pod`.
fn handler_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)
}

/// `reason: message` of a Job's `Failed` condition.
fn failed_condition(j: &Job) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        })
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

/// Seconds back from now to a time in Unix nanoseconds, rounded up and one more.
fn since_seconds(ns: i128) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    i64::try_from((now - ns).max(0) / 1_000_000_000 + 2).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl Executor for KubernetesExecutor {
    /// Nothing to do ahead: the node pulls per the pull policy, and a missing image fails
    /// the pod's start with the reason.
    async fn ensure_image(&self, _reference: &str) -> Result<(), ExecError> {
        Ok(())
    }

    async fn ensure_built(&self, tag: &str, context: &std::path::Path) -> Result<(), ExecError> {
        Err(ExecError::ImageUnavailable(format!(
            "the handler builds its image from {} (`build:`), and the Kubernetes executor does not build images: build and push it to a registry the cluster pulls from, then name it in `image:` (it would be tagged `{tag}`)",
            context.file_name().map_or(String::new(), |n| format!("containers/{}", n.to_string_lossy()))
        )))
    }

    async fn run(
        &self,
        spec: &ContainerSpec,
        on_started: &mut (dyn FnMut() + Send),
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        mut cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let payload = payload::collect(spec).map_err(ExecError::Unstartable)?;
        let objects = job::objects(spec, &self.cfg, &self.namespace, &payload)
            .map_err(ExecError::Unstartable)?;
        let job = job_name(&spec.name);
        let mut phases = Phases::default();
        let t = std::time::Instant::now();
        if let Err(e) = self.create(&objects).await {
            self.purge(&job).await;
            return Err(ExecError::Engine(e.context(format!(
                "failed to create Job {job} in namespace {}",
                self.namespace
            ))));
        }
        phases.create = us_since(t);
        let t = std::time::Instant::now();
        let pod = match self.await_start(&job, &mut cancel).await {
            Ok(Start::Pod(pod)) => pod,
            Ok(Start::Unstartable(e)) => {
                self.purge(&job).await;
                return Err(e);
            }
            Ok(Start::Cancelled) => {
                // Nothing ran: the request stays pending for a later pass.
                self.purge(&job).await;
                return Err(ExecError::Engine(anyhow::anyhow!(
                    "the runner stopped before the handler's pod started"
                )));
            }
            Err(e) => {
                self.purge(&job).await;
                return Err(ExecError::Engine(e));
            }
        };
        phases.start = us_since(t);
        // The request is handed out once: Kubernetes 1.20's Job controller starts a new pod
        // for one deleted under it, and that pod must find nothing to run.
        self.delete_files(&job).await;
        on_started();
        let ends_at = tokio::time::Instant::now() + spec.timeout;
        let mut outcome = self
            .follow(
                &job,
                &pod,
                None,
                ends_at,
                spec.grace,
                spec.output_cap,
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

    /// Output the kubelet stamped after `after_ms` is read from the pod's log, then followed.
    async fn resume(
        &self,
        r: &Resume,
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let job = job_name(&r.name);
        let Some(pod) = self.pod_of(&job).await? else {
            return Ok(RunOutcome::default());
        };
        let pod = pod.metadata.name.unwrap_or_default();
        let after = Some(i128::from(r.after_ms) * 1_000_000);
        let ends_at = tokio::time::Instant::now() + r.remaining;
        Ok(self
            .follow(
                &job, &pod, after, ends_at, r.grace, r.cap, on_output, cancel,
            )
            .await?)
    }

    async fn fate(&self, name: &str) -> anyhow::Result<Fate> {
        let job = job_name(name);
        let Some(j) = self.jobs().get_opt(&job).await? else {
            return Ok(Fate::Missing);
        };
        let owner = annotation(&j.metadata, OWNER);
        let state = self
            .pod_of(&job)
            .await?
            .as_ref()
            .and_then(handler_status)
            .and_then(|c| c.state.clone())
            .unwrap_or_default();
        Ok(if let Some(t) = state.terminated {
            Fate::Exited {
                owner,
                exit_code: Some(i64::from(t.exit_code)),
            }
        } else if state.running.is_some() {
            Fate::Running { owner }
        } else if failed_condition(&j).is_some() {
            Fate::Exited {
                owner,
                exit_code: None,
            }
        } else {
            Fate::Created
        })
    }

    async fn remove(&self, name: &str) {
        self.delete_job(&job_name(name)).await;
    }

    async fn reap_orphans(
        &self,
        runner: &str,
        _grace: Duration,
        keep: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let jobs = self.ours(Some(runner)).await?;
        let mut reaped = Vec::new();
        let mut live_jobs = Vec::new();
        for j in jobs {
            let name = annotation(&j.metadata, NAME).unwrap_or_default();
            let job = j.metadata.name.clone().unwrap_or_default();
            if keep.contains(&name) || owner_is_alive(annotation(&j.metadata, OWNER).as_deref()) {
                live_jobs.push(job);
                continue;
            }
            tracing::warn!(job = %job, "deleting a Job left by a dead runner; its request runs again");
            self.delete_job(&job).await;
            reaped.push(name);
        }
        // Files and secrets whose Job was never made (the runner died in between).
        let selector = format!("{MANAGED}=true,{RUNNER}={}", label_value(runner));
        let lp = ListParams::default().labels(&selector);
        let mut stray: Vec<(String, Option<String>, Option<String>)> = Vec::new();
        for cm in self
            .config_maps()
            .list(&lp)
            .await
            .context("failed to list ConfigMaps")?
            .items
        {
            let m = cm.metadata;
            stray.push((
                m.name.clone().unwrap_or_default(),
                m.labels.and_then(|l| l.get(JOB).cloned()),
                m.annotations.and_then(|a| a.get(OWNER).cloned()),
            ));
        }
        let cms = stray.len();
        for s in self
            .secrets()
            .list(&lp)
            .await
            .context("failed to list Secrets")?
            .items
        {
            let m = s.metadata;
            stray.push((
                m.name.clone().unwrap_or_default(),
                m.labels.and_then(|l| l.get(JOB).cloned()),
                m.annotations.and_then(|a| a.get(OWNER).cloned()),
            ));
        }
        for (i, (name, job, owner)) in stray.into_iter().enumerate() {
            let job = job.unwrap_or_default();
            if live_jobs.contains(&job) || owner_is_alive(owner.as_deref()) {
                continue;
            }
            if self.jobs().get_opt(&job).await?.is_some() {
                continue;
            }
            let dp = DeleteParams::default();
            let r = if i < cms {
                self.config_maps().delete(&name, &dp).await.map(|_| ())
            } else {
                self.secrets().delete(&name, &dp).await.map(|_| ())
            };
            if let Err(e) = r {
                tracing::warn!(object = %name, error = %e, "failed to delete a leftover");
            }
        }
        Ok(reaped)
    }

    async fn managed_containers(&self, runner: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(self
            .ours(runner)
            .await?
            .into_iter()
            .filter_map(|j| annotation(&j.metadata, NAME))
            .collect())
    }

    /// Nothing of this host is mounted into a pod.
    async fn mount_sources(&self) -> anyhow::Result<Vec<std::path::PathBuf>> {
        Ok(Vec::new())
    }

    /// The cluster's RuntimeClasses: what `runtime:` names here.
    async fn runtimes(&self) -> anyhow::Result<Vec<String>> {
        let api: Api<RuntimeClass> = Api::all(self.client.clone());
        let mut names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .context("failed to list the cluster's RuntimeClasses")?
            .items
            .into_iter()
            .filter_map(|r| r.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }

    fn outlives_host(&self) -> bool {
        true
    }
}
