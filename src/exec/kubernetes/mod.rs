//! The ONLY place that talks to Kubernetes (through kube-rs): the second [`Executor`]. Each
//! run is one `batch/v1` Job whose pod gets the checkout and the request through ConfigMaps
//! and its secrets through a Secret, all owned by the Job so they go with it. Output is read
//! from the pod's log as it is written; the runner enforces the timeout and cancels by
//! deleting the Job (its pod gets SIGTERM, the grace period, SIGKILL).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

mod ending;
mod follow;
pub mod job;
pub mod payload;
pub mod settings;
mod stamps;
mod start;

pub use settings::{KubernetesConfig, KubernetesFile};

use super::{
    owner_is_alive, us_since, Cancel, ContainerSpec, ExecError, Executor, Fate, OutputEvent,
    Phases, Resume, RunOutcome,
};
use job::{job_name, label_value, CONTAINER, JOB, MANAGED, NAME, OWNER, RUNNER};
use start::Start;

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

    /// The server's version and the namespace, once the runner may do all it needs there;
    /// else what it may not, in the operator's terms.
    pub async fn access(&self) -> Result<String, String> {
        let about = self.describe().await.map_err(|e| format!("{e:#}"))?;
        match self.missing_permissions().await {
            Ok(missing) if missing.is_empty() => Ok(about),
            Ok(missing) => Err(format!(
                "{about}; the runner may not: {} (grant the Role in docs/kubernetes/rbac.yaml)",
                missing.join(", ")
            )),
            Err(e) => Err(format!("{about}; {e:#}")),
        }
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

    /// Delete `runner`'s objects in `api` whose Job does not exist and whose owner process
    /// is dead (its Job was never made), except those of `live_jobs`.
    async fn reap_strays<K>(
        &self,
        api: Api<K>,
        runner: &str,
        live_jobs: &[String],
    ) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let selector = format!("{MANAGED}=true,{RUNNER}={}", label_value(runner));
        let lp = ListParams::default().labels(&selector);
        let items = api
            .list(&lp)
            .await
            .with_context(|| format!("failed to list {}", K::plural(&())))?
            .items;
        for item in items {
            let meta = item.meta();
            let name = meta.name.clone().unwrap_or_default();
            let job = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(JOB).cloned())
                .unwrap_or_default();
            if live_jobs.contains(&job)
                || owner_is_alive(annotation(meta, OWNER).as_deref())
                || self.jobs().get_opt(&job).await?.is_some()
            {
                continue;
            }
            if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                tracing::warn!(object = %name, error = %e, "failed to delete a leftover");
            }
        }
        Ok(())
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
        let outcome = self
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
        Ok(outcome.after_setup(phases))
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
        self.reap_strays(self.config_maps(), runner, &live_jobs)
            .await?;
        self.reap_strays(self.secrets(), runner, &live_jobs).await?;
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
