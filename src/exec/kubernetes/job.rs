//! PURE. A [`ContainerSpec`] as Kubernetes objects: one `batch/v1` Job, the ConfigMaps that
//! carry the checkout and the request into its pod, and the Secret that carries the handler's
//! secrets. Names, labels and hardening are decided here; nothing talks to a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use serde_json::{json, Value};
use sha2::Digest;

use crate::exec::spec::ContainerSpec;
use crate::exec::LABEL_OWNER;

use super::payload::Payload;
use super::settings::{is_label_value, KubernetesConfig, DOMAIN};

/// The one container of a handler's pod.
pub const CONTAINER: &str = "handler";
/// Where the checkout and the request appear (`/codex/repo`, `/codex/request.json`).
pub const CODEX_DIR: &str = "/codex";
/// Most bytes of files one ConfigMap carries (Kubernetes refuses more than 1 MiB).
pub const CHUNK: usize = 900 << 10;
/// Most bytes of files a pod gets through ConfigMaps.
pub const MAX_PAYLOAD: usize = 8 << 20;

/// Label: the object is ours.
pub const MANAGED: &str = "codex-runner.io/managed";
/// Label: the runner (made a label value).
pub const RUNNER: &str = "codex-runner.io/runner";
/// Label: the Job a ConfigMap or Secret belongs to.
pub const JOB: &str = "codex-runner.io/job";
/// Label: the pod's network, `none` or `host`; docs/kubernetes/networkpolicy.yaml denies all
/// traffic to and from `none`.
pub const NETWORK: &str = "codex-runner.io/network";
/// Annotation: the container name the engine knows the run by.
pub const NAME: &str = "codex-runner.io/name";
/// Annotation: the runner process that made the Job (`<boot id>/<pid>`).
pub const OWNER: &str = "codex-runner.io/owner";

/// What one run becomes in the cluster.
#[derive(Debug, Clone)]
pub struct Objects {
    /// The Job.
    pub job: Job,
    /// The checkout and the request, in pieces of at most [`CHUNK`].
    pub config_maps: Vec<ConfigMap>,
    /// The handler's secrets, when it has any.
    pub secret: Option<Secret>,
}

/// The Job's name for a run the engine calls `name`: a DNS label of at most 63 characters
/// (a pod's `job-name` label holds it), with a hash of `name` when it had to be changed.
pub fn job_name(name: &str) -> String {
    let lower: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let trimmed = lower.trim_matches('-');
    if trimmed == name && name.len() <= 63 {
        return name.to_string();
    }
    let mut short: String = trimmed.chars().take(52).collect();
    while short.ends_with('-') {
        short.pop();
    }
    format!("{short}-{}", &hash(name)[..10])
}

/// `value` as a label value: itself when it is one, else cleaned and cut, with a hash.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(52)
        .collect();
    let clean = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if clean.is_empty() {
        return format!("h{}", &hash(value)[..10]);
    }
    format!("{clean}-{}", &hash(value)[..10])
}

fn hash(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Our labels of a run's objects, from the engine's container labels (`io.codex-runner.x`
/// becomes `codex-runner.io/x`, its value made a label value); the owner, which is no label
/// value, is an annotation only.
fn labels(spec: &ContainerSpec, job: &str, cfg: &KubernetesConfig) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = cfg.labels.clone();
    for (k, v) in &spec.labels {
        if k == LABEL_OWNER {
            continue;
        }
        if let Some(rest) = k.strip_prefix("io.codex-runner.") {
            out.insert(format!("{DOMAIN}{rest}"), label_value(v));
        }
    }
    out.insert(MANAGED.into(), "true".into());
    out.insert(JOB.into(), job.to_string());
    out.insert(NETWORK.into(), label_value(&spec.network));
    out
}

/// The annotations: the engine's labels with their values as they are, and its name.
fn annotations(spec: &ContainerSpec) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = spec
        .labels
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("io.codex-runner.")
                .map(|rest| (format!("{DOMAIN}{rest}"), v.clone()))
        })
        .collect();
    out.insert(NAME.into(), spec.name.clone());
    out
}

/// The objects for `spec` in `namespace`, carrying `payload`; or why they cannot be made,
/// in the operator's terms.
pub fn objects(
    spec: &ContainerSpec,
    cfg: &KubernetesConfig,
    namespace: &str,
    payload: &Payload,
) -> Result<Objects, String> {
    let job = job_name(&spec.name);
    let labels = labels(spec, &job, cfg);
    let annotations = annotations(spec);
    let (uid, gid) = user_ids(&spec.user)?;
    let meta = |name: String| {
        json!({
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        })
    };

    // The files, packed into ConfigMaps; each item puts one key at its path under /codex.
    let total: usize = payload.files.iter().map(|f| f.data.len()).sum();
    if total > MAX_PAYLOAD {
        return Err(format!(
            "the checkout and the request come to {total} bytes; the Kubernetes executor delivers at most {MAX_PAYLOAD} (use `checkout: lean`, or keep large files out of the repository)"
        ));
    }
    let mut chunks: Vec<(BTreeMap<String, ByteString>, Vec<Value>)> = Vec::new();
    let mut size = CHUNK;
    for (i, f) in payload.files.iter().enumerate() {
        if f.data.len() > CHUNK {
            return Err(format!(
                "`{}` is {} bytes; the Kubernetes executor delivers files of at most {CHUNK} bytes",
                f.path,
                f.data.len()
            ));
        }
        if size + f.data.len() > CHUNK || chunks.is_empty() {
            chunks.push((BTreeMap::new(), Vec::new()));
            size = 0;
        }
        size += f.data.len();
        let Some((data, items)) = chunks.last_mut() else {
            continue;
        };
        let key = format!("f{i}");
        data.insert(key.clone(), ByteString(f.data.clone()));
        items.push(json!({
            "key": key,
            "path": f.path,
            "mode": if f.executable { 0o555 } else { 0o444 },
        }));
    }
    let mut config_maps = Vec::new();
    let mut sources = Vec::new();
    for (n, (data, items)) in chunks.into_iter().enumerate() {
        let name = format!("{job}-files-{n}");
        config_maps.push(ConfigMap {
            metadata: from(meta(name.clone()))?,
            binary_data: Some(data),
            // Not immutable: the kubelet stops watching an immutable object, and would go on
            // handing a deleted one to a second pod of the Job.
            ..Default::default()
        });
        sources.push(json!({ "configMap": { "name": name, "items": items } }));
    }

    let mut env: Vec<Value> = spec
        .env
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            json!({ "name": k, "value": v })
        })
        .collect();
    let secret_name = format!("{job}-secrets");
    let mut secret_data: BTreeMap<String, ByteString> = BTreeMap::new();
    for (k, v) in &spec.secret_env {
        let key = format!("env.{k}");
        secret_data.insert(key.clone(), ByteString(v.clone().into_bytes()));
        env.push(json!({
            "name": k,
            "valueFrom": { "secretKeyRef": { "name": secret_name, "key": key } },
        }));
    }
    let mut secret_items = Vec::new();
    for (name, value) in &payload.secret_files {
        let key = format!("file.{name}");
        secret_data.insert(key.clone(), ByteString(value.clone()));
        secret_items.push(json!({ "key": key, "path": name }));
    }

    let mut mounts = vec![
        json!({ "name": "codex", "mountPath": CODEX_DIR, "readOnly": true }),
        json!({ "name": "tmp", "mountPath": "/tmp" }),
    ];
    let mut volumes = vec![
        json!({ "name": "codex", "projected": { "defaultMode": 0o444, "sources": sources } }),
        json!({ "name": "tmp", "emptyDir": { "medium": "Memory", "sizeLimit": spec.tmpfs_bytes.to_string() } }),
    ];
    if !secret_items.is_empty() {
        mounts.push(json!({ "name": "secrets", "mountPath": crate::secrets::SECRETS_MOUNT, "readOnly": true }));
        volumes.push(json!({ "name": "secrets", "secret": { "secretName": secret_name, "defaultMode": 0o440, "items": secret_items } }));
    }
    let secret = if secret_data.is_empty() {
        None
    } else {
        Some(Secret {
            metadata: from(meta(secret_name))?,
            data: Some(secret_data),
            type_: Some("Opaque".into()),
            ..Default::default()
        })
    };

    let millicpu = (spec.nano_cpus / 1_000_000).max(1);
    let grace = spec.grace.as_secs();
    let mut pod = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        // The pause container is PID 1 and reaps; the handler gets SIGTERM as under
        // Docker's `--init`.
        "shareProcessNamespace": true,
        "terminationGracePeriodSeconds": grace,
        "hostNetwork": spec.network == "host",
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": uid != 0,
            "fsGroup": gid,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [{
            "name": CONTAINER,
            "image": spec.image,
            "imagePullPolicy": cfg.image_pull_policy.as_str(),
            // The handler is the entrypoint: the image's own never runs instead.
            "command": spec.cmd,
            "workingDir": spec.working_dir,
            "env": env,
            "securityContext": {
                "readOnlyRootFilesystem": spec.read_only_root,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": { "drop": ["ALL"] },
            },
            "resources": {
                "limits": { "cpu": format!("{millicpu}m"), "memory": spec.memory.to_string() },
                // Memory is not overcommitted; CPU is shared as on one Docker host.
                "requests": { "cpu": format!("{}m", (millicpu / 10).max(1)), "memory": spec.memory.to_string() },
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    if let Some(obj) = pod.as_object_mut() {
        if let Some(sa) = &cfg.service_account {
            obj.insert("serviceAccountName".into(), json!(sa));
        }
        if let Some(rt) = &spec.runtime {
            obj.insert("runtimeClassName".into(), json!(rt));
        }
        if !cfg.node_selector.is_empty() {
            obj.insert("nodeSelector".into(), json!(cfg.node_selector));
        }
        if !cfg.tolerations.is_empty() {
            let t: Vec<Value> = cfg
                .tolerations
                .iter()
                .map(|t| json!({ "key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect }))
                .collect();
            obj.insert("tolerations".into(), json!(t));
        }
    }
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(job),
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            // A backstop for a runner that never comes back: the runner stops the handler
            // at its timeout itself, counted from the container's start.
            "activeDeadlineSeconds": active_deadline(spec, cfg),
            "template": {
                "metadata": { "labels": labels, "annotations": annotations },
                "spec": pod,
            },
        },
    });
    Ok(Objects {
        job: from(job)?,
        config_maps,
        secret,
    })
}

/// Seconds a Job may be active: the start allowance, the timeout and the grace period.
pub fn active_deadline(spec: &ContainerSpec, cfg: &KubernetesConfig) -> u64 {
    (cfg.start_timeout + spec.timeout + spec.grace)
        .as_secs()
        .max(1)
}

fn user_ids(user: &str) -> Result<(i64, i64), String> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!(
            "the Kubernetes executor needs a numeric user, `uid:gid`, not `{user}`"
        )),
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("internal error building the Job: {e}"))
}

#[cfg(test)]
pub(super) fn tests_spec() -> ContainerSpec {
    use std::collections::HashMap;
    use std::time::Duration;
    ContainerSpec {
        name: "codex-Host_1-ops-1234-r1-1".into(),
        image: "img:1".into(),
        cmd: vec!["/codex/repo/handlers/echo.sh".into()],
        env: vec!["CODEX_ATTEMPT=1".into(), "A=b=c".into()],
        secret_env: vec![("TOKEN".into(), "s3cret".into())],
        labels: HashMap::from([
            ("io.codex-runner.managed".to_string(), "true".to_string()),
            ("io.codex-runner.runner".to_string(), "Host 1".to_string()),
            ("io.codex-runner.request".to_string(), "r1".to_string()),
            (LABEL_OWNER.to_string(), "boot/42".to_string()),
        ]),
        user: "65534:65534".into(),
        network: "none".into(),
        runtime: Some("gvisor".into()),
        read_only_root: true,
        tmpfs_bytes: 64 << 20,
        memory: 512 << 20,
        pids: 256,
        nano_cpus: 1_500_000_000,
        mounts: vec![],
        working_dir: "/codex/repo".into(),
        timeout: Duration::from_secs(60),
        grace: Duration::from_secs(10),
        output_cap: 1 << 20,
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::File;
    use super::*;

    fn spec() -> ContainerSpec {
        tests_spec()
    }

    fn payload(sizes: &[usize]) -> Payload {
        Payload {
            files: sizes
                .iter()
                .enumerate()
                .map(|(i, n)| File {
                    path: format!("repo/f{i}"),
                    data: vec![b'x'; *n],
                    executable: i == 0,
                })
                .collect(),
            secret_files: vec![("KEY".into(), b"k".to_vec())],
        }
    }

    #[test]
    fn names_fit_kubernetes() {
        assert_eq!(job_name("codex-a-b-1"), "codex-a-b-1");
        let n = job_name("codex-Host_1-ops-1234-r1-1");
        assert!(n.starts_with("codex-host-1-ops-1234-r1-1-"), "{n}");
        let long = job_name(&format!("codex-{}-1", "x".repeat(100)));
        assert!(
            long.len() <= 63 && super::super::settings::is_dns_label(&long),
            "{long}"
        );
        assert_ne!(job_name("codex-a_b-1"), job_name("codex-a.b-1"));
        assert_eq!(
            label_value("Host 1"),
            format!("Host_1-{}", &hash("Host 1")[..10])
        );
        assert!(is_label_value(&label_value("!!!")));
    }

    #[test]
    fn the_job_is_hardened_and_carries_no_secret() {
        let o = objects(
            &spec(),
            &KubernetesConfig::default(),
            "ops",
            &payload(&[10, 20]),
        )
        .unwrap();
        let job = serde_json::to_value(&o.job).unwrap();
        let text = job.to_string();
        assert!(!text.contains("s3cret"), "a secret in the Job: {text}");
        let s = &job["spec"];
        assert_eq!(s["backoffLimit"], 0);
        assert_eq!(s["activeDeadlineSeconds"], 370);
        let pod = &s["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["runtimeClassName"], "gvisor");
        assert_eq!(pod["securityContext"]["runAsUser"], 65534);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["resources"]["limits"]["cpu"], "1500m");
        assert_eq!(c["resources"]["limits"]["memory"], "536870912");
        assert_eq!(c["env"][1]["value"], "b=c");
        assert_eq!(c["env"][2]["valueFrom"]["secretKeyRef"]["key"], "env.TOKEN");
        assert_eq!(pod["volumes"][1]["emptyDir"]["medium"], "Memory");
        let meta = &job["metadata"];
        assert_eq!(meta["labels"][RUNNER], label_value("Host 1"));
        assert_eq!(meta["annotations"]["codex-runner.io/runner"], "Host 1");
        assert_eq!(meta["annotations"][OWNER], "boot/42");
        assert_eq!(meta["annotations"][NAME], "codex-Host_1-ops-1234-r1-1");
        assert!(meta["labels"].get(OWNER).is_none());
        assert_eq!(s["template"]["metadata"]["labels"][NETWORK], "none");
        assert_eq!(pod["hostNetwork"], false);
        assert_eq!(o.config_maps.len(), 1);
        let items = &pod["volumes"][0]["projected"]["sources"][0]["configMap"]["items"];
        assert_eq!(items[0]["mode"], 0o555);
        assert_eq!(items[1]["path"], "repo/f1");
        let secret = o.secret.unwrap();
        let data = secret.data.unwrap();
        assert_eq!(data["env.TOKEN"].0, b"s3cret");
        assert_eq!(data["file.KEY"].0, b"k");
    }

    #[test]
    fn files_are_packed_within_the_limits() {
        let o = objects(
            &spec(),
            &KubernetesConfig::default(),
            "ops",
            &payload(&[CHUNK - 5, 5, CHUNK, 1]),
        )
        .unwrap();
        assert_eq!(o.config_maps.len(), 3);
        let err = objects(
            &spec(),
            &KubernetesConfig::default(),
            "ops",
            &payload(&[CHUNK + 1]),
        )
        .unwrap_err();
        assert!(err.contains("`repo/f0` is"), "{err}");
        let many = vec![CHUNK; MAX_PAYLOAD / CHUNK + 1];
        let err = objects(
            &spec(),
            &KubernetesConfig::default(),
            "ops",
            &payload(&many),
        )
        .unwrap_err();
        assert!(err.contains("delivers at most"), "{err}");
        let mut root = spec();
        root.user = "root".into();
        let err = objects(&root, &KubernetesConfig::default(), "ops", &payload(&[1])).unwrap_err();
        assert!(err.contains("numeric user"), "{err}");
    }
}
