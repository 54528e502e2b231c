//! PURE. From a handler entry, the request and the host's ceilings to a [`ContainerSpec`].
//!
//! Hardened defaults come from the handler's [`Limits`]; anything beyond what the host config
//! allows is refused here, before a container exists.

use crate::commit::CommitId;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::HostLimits;
use crate::contract::handlers::{HandlerSpec, Network};
use crate::contract::units::format_duration;
use crate::secrets::SECRETS_MOUNT;

use super::{owner_label, LABEL_MANAGED, LABEL_OWNER, LABEL_REQUEST, LABEL_RUNNER};

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything the executor needs to start one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name (unique per runner, request and attempt).
    pub name: String,
    /// Image reference or built tag.
    pub image: String,
    /// Command; the handler script.
    pub cmd: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Secrets in the environment, (name, value): apart from `env`, so that an executor can
    /// keep them out of what it writes down about the container (a Kubernetes Job's spec).
    pub secret_env: Vec<(String, String)>,
    /// Labels that find the container again.
    pub labels: HashMap<String, String>,
    /// `uid:gid`.
    pub user: String,
    /// `none` or `host`.
    pub network: String,
    /// The OCI runtime (`runsc`); the engine's default when `None`.
    pub runtime: Option<String>,
    /// Read-only `/`.
    pub read_only_root: bool,
    /// Size of the `/tmp` tmpfs.
    pub tmpfs_bytes: u64,
    /// Memory limit (swap is not allowed on top).
    pub memory: u64,
    /// Process limit.
    pub pids: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Working directory.
    pub working_dir: String,
    /// Time allowed before SIGTERM.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Output kept at most.
    pub output_cap: u64,
}

/// What the engine knows about one run.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The runner's name.
    pub runner: String,
    /// The request id.
    pub request_id: String,
    /// Short key of the repository, so runs of the same id in two repositories never share
    /// a container name.
    pub scope: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The commit that brought the request.
    pub commit: CommitId,
    /// Image to run (resolved reference or built tag).
    pub image: String,
    /// Checkout of the repository at `commit`.
    pub repo_dir: PathBuf,
    /// The request as JSON on the host.
    pub request_json: PathBuf,
    /// Effective timeout.
    pub timeout: Duration,
    /// Top-level scalar params, exported as `CODEX_PARAM_<NAME>` for shell handlers.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Secrets the handler gets in its environment: (name, value).
    pub secret_env: Vec<(String, String)>,
    /// The staged directory of its file secrets, mounted at `/run/secrets`.
    pub secret_files: Option<PathBuf>,
}

/// Where the repository appears inside the container.
pub const REPO_MOUNT: &str = "/codex/repo";
/// Where the request appears inside the container.
pub const REQUEST_MOUNT: &str = "/codex/request.json";

/// Build the container spec, or say which host limit the handler asks to exceed.
pub fn container_spec(
    handler: &HandlerSpec,
    ctx: &RunContext,
    host: &HostLimits,
) -> Result<ContainerSpec, String> {
    let l = &handler.limits;
    let kind = &handler.kind;
    let refuse = |what: String| {
        Err(format!(
            "handler `{kind}` asks for {what}, which this host's config does not allow"
        ))
    };
    if l.memory > host.max_memory {
        return refuse(format!(
            "{} bytes of memory (host maximum {})",
            l.memory, host.max_memory
        ));
    }
    if l.pids > host.max_pids {
        return refuse(format!(
            "{} processes (host maximum {})",
            l.pids, host.max_pids
        ));
    }
    if l.cpus > host.max_cpus {
        return refuse(format!("{} CPUs (host maximum {})", l.cpus, host.max_cpus));
    }
    if l.tmpfs > host.max_tmpfs {
        return refuse(format!(
            "a {} byte /tmp (host maximum {})",
            l.tmpfs, host.max_tmpfs
        ));
    }
    if handler.network == Network::Host && !host.allow_network_host {
        return refuse("the host network (set limits.allow_network_host)".into());
    }
    if !l.read_only_root && !host.allow_writable_root {
        return refuse("a writable root filesystem (set limits.allow_writable_root)".into());
    }
    if let Some(r) = &handler.runtime {
        if !host.runtimes.contains(r) {
            return refuse(format!("the `{r}` runtime (list it in limits.runtimes)"));
        }
    }
    if l.user.split(':').next() == Some("0") && !host.allow_root {
        return refuse("uid 0 (set limits.allow_root)".into());
    }
    if ctx.timeout > host.max_timeout {
        return refuse(format!(
            "a {} timeout (host maximum {})",
            format_duration(ctx.timeout),
            format_duration(host.max_timeout)
        ));
    }
    let mut env: Vec<String> = handler
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.extend([
        format!("CODEX_REQUEST_ID={}", ctx.request_id),
        format!("CODEX_KIND={kind}"),
        format!("CODEX_ATTEMPT={}", ctx.attempt),
        format!("CODEX_COMMIT={}", ctx.commit),
        format!("CODEX_REQUEST={REQUEST_MOUNT}"),
        format!("CODEX_REPO={REPO_MOUNT}"),
        "HOME=/tmp".to_string(),
    ]);
    let mut mounts = vec![
        Mount {
            source: ctx.repo_dir.clone(),
            target: REPO_MOUNT.into(),
            read_only: true,
        },
        Mount {
            source: ctx.request_json.clone(),
            target: REQUEST_MOUNT.into(),
            read_only: true,
        },
    ];
    if let Some(dir) = &ctx.secret_files {
        env.push(format!("CODEX_SECRETS={SECRETS_MOUNT}"));
        mounts.push(Mount {
            source: dir.clone(),
            target: SECRETS_MOUNT.into(),
            read_only: true,
        });
    }
    for (name, value) in &ctx.params {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        let key: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push(format!("CODEX_PARAM_{key}={text}"));
    }
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_RUNNER.to_string(), ctx.runner.clone()),
        (LABEL_REQUEST.to_string(), ctx.request_id.clone()),
        (
            "io.codex-runner.attempt".to_string(),
            ctx.attempt.to_string(),
        ),
        ("io.codex-runner.commit".to_string(), ctx.commit.to_string()),
        (LABEL_OWNER.to_string(), owner_label()),
    ]);
    Ok(ContainerSpec {
        name: container_name(&ctx.runner, &ctx.scope, &ctx.request_id, ctx.attempt),
        image: ctx.image.clone(),
        cmd: vec![format!("{REPO_MOUNT}/{}", handler.run)],
        env,
        secret_env: ctx.secret_env.clone(),
        labels,
        user: l.user.clone(),
        network: handler.network.as_str().to_string(),
        runtime: handler.runtime.clone(),
        read_only_root: l.read_only_root,
        tmpfs_bytes: l.tmpfs,
        memory: l.memory,
        pids: l.pids,
        nano_cpus: (l.cpus * 1e9) as i64,
        mounts,
        working_dir: REPO_MOUNT.into(),
        timeout: ctx.timeout,
        grace: host.grace,
        output_cap: host.output_cap,
    })
}

/// A Docker-safe container name for a run: runner, repository, request and attempt.
pub fn container_name(runner: &str, scope: &str, id: &str, attempt: u32) -> String {
    format!(
        "{}{}-{}-{attempt}",
        container_prefix(runner),
        clean(scope),
        clean(id)
    )
}

/// How the names of one runner's containers begin.
pub fn container_prefix(runner: &str) -> String {
    format!("codex-{}-", clean(runner))
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::handlers::HandlerIndex;

    fn ctx() -> RunContext {
        RunContext {
            runner: "host 1".into(),
            request_id: "r1".into(),
            scope: "ops-1234".into(),
            attempt: 1,
            commit: CommitId::NONE,
            image: "img".into(),
            repo_dir: "/w/repo".into(),
            request_json: "/w/r1.json".into(),
            timeout: Duration::from_secs(60),
            params: serde_json::json!({"service": "web", "n": 3, "deep": {"x": 1}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            secret_env: vec![],
            secret_files: None,
        }
    }

    fn handler(extra: &str) -> HandlerSpec {
        let text =
            format!("handlers:\n  echo:\n    run: handlers/echo.sh\n    image: img\n{extra}");
        let mut idx = HandlerIndex::parse(text.as_bytes()).unwrap();
        let echo = idx.handlers.remove("echo").unwrap();
        std::sync::Arc::try_unwrap(echo).unwrap()
    }

    #[test]
    fn hardened_defaults() {
        let s = container_spec(&handler(""), &ctx(), &HostLimits::default()).unwrap();
        assert_eq!(s.name, "codex-host_1-ops-1234-r1-1");
        assert_eq!(s.user, "65534:65534");
        assert_eq!(s.network, "none");
        assert!(s.read_only_root);
        assert_eq!(
            (s.memory, s.pids, s.nano_cpus),
            (512 << 20, 256, 1_000_000_000)
        );
        assert_eq!(s.cmd, ["/codex/repo/handlers/echo.sh"]);
        assert!(s.env.contains(&"CODEX_ATTEMPT=1".to_string()));
        assert!(s.env.contains(&"CODEX_PARAM_SERVICE=web".to_string()));
        assert!(s.env.contains(&"CODEX_PARAM_N=3".to_string()));
        assert!(!s.env.iter().any(|e| e.starts_with("CODEX_PARAM_DEEP")));
        assert_eq!(s.labels[LABEL_REQUEST], "r1");
        assert_eq!(s.mounts[0].target, REPO_MOUNT);
        assert!(s.mounts.iter().all(|m| m.read_only));
        assert!(!s.env.iter().any(|e| e.starts_with("CODEX_SECRETS")));
        let with = RunContext {
            secret_env: vec![("TOKEN".into(), "abcd".into())],
            secret_files: Some("/dev/shm/x".into()),
            ..ctx()
        };
        let s = container_spec(&handler(""), &with, &HostLimits::default()).unwrap();
        assert_eq!(s.secret_env, [("TOKEN".to_string(), "abcd".to_string())]);
        assert!(!s.env.iter().any(|e| e.contains("abcd")));
        assert!(s.env.contains(&"CODEX_SECRETS=/run/secrets".to_string()));
        let m = s.mounts.last().unwrap();
        assert_eq!((m.target.as_str(), m.read_only), (SECRETS_MOUNT, true));
    }

    #[test]
    fn host_ceilings_refuse() {
        let host = HostLimits::default();
        for extra in [
            "    network: host\n",
            "    limits:\n      memory: 64GiB\n",
            "    limits:\n      read_only_root: false\n",
            "    limits:\n      user: \"0:0\"\n",
            "    runtime: runsc\n",
        ] {
            let err = container_spec(&handler(extra), &ctx(), &host).unwrap_err();
            assert!(err.contains("does not allow"), "{err}");
        }
        let open = HostLimits {
            allow_network_host: true,
            ..HostLimits::default()
        };
        assert!(container_spec(&handler("    network: host\n"), &ctx(), &open).is_ok());
    }

    #[test]
    fn a_runtime_the_host_lists_is_what_the_container_runs_under() {
        let gvisor = HostLimits {
            runtimes: vec!["runsc".into()],
            ..HostLimits::default()
        };
        let s = container_spec(&handler("    runtime: runsc\n"), &ctx(), &gvisor).unwrap();
        assert_eq!(s.runtime.as_deref(), Some("runsc"));
        assert_eq!(
            container_spec(&handler(""), &ctx(), &gvisor)
                .unwrap()
                .runtime,
            None
        );
        let err = container_spec(&handler("    runtime: kata\n"), &ctx(), &gvisor).unwrap_err();
        assert!(
            err.contains("the `kata` runtime (list it in limits.runtimes)"),
            "{err}"
        );
        let bad = HandlerIndex::parse(
            b"handlers:\n  echo:\n    run: handlers/echo.sh\n    image: img\n    runtime: \"run sc\"\n",
        )
        .unwrap_err();
        assert_eq!(bad.0[0].rule, "invalid-runtime", "{bad}");
    }
}
