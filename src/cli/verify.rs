//! `codex-runner verify`: is this registered runner able to do its work, end to end, without
//! running a request? One line per check; exit 0 only when every one holds.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::HostConfig;
use crate::contract::handlers::{HandlerIndex, ImageSource, INDEX_PATH};
use crate::engine::DispatchOptions;
use crate::exit;
use crate::forge::GitHub;

use super::status::{operator_address, operator_get};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Host config [default: as `register`].
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// `text` (a line each) or `json`.
    #[arg(long, env = "CODEX_RUNNER_FORMAT", value_enum, default_value = "text")]
    pub format: super::ReportFormat,
}

/// One check's verdict.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// How long a ping may take to reach the daemon.
const PING_WITHIN: Duration = Duration::from_secs(10);

/// Run `verify`.
pub async fn run(a: VerifyArgs) -> i32 {
    let path = super::paths::config_or_default(a.config.clone());
    let checks = checks(&path).await;
    let ok = checks.iter().all(|c| c.ok);
    match a.format {
        super::ReportFormat::Json => println!(
            "{}",
            json!({
                "config": path,
                "ok": ok,
                "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
            })
        ),
        super::ReportFormat::Text => {
            for c in &checks {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                println!("{mark} {}: {}", c.name, c.detail);
            }
            println!("{}", if ok { "verify passed" } else { "verify failed" });
        }
    }
    if ok {
        exit::OK
    } else {
        exit::FAILED
    }
}

async fn checks(path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let mut said = |name, r: Result<String, String>| {
        out.push(match r {
            Ok(detail) => Check {
                name,
                ok: true,
                detail,
            },
            Err(detail) => Check {
                name,
                ok: false,
                detail,
            },
        })
    };
    let host = match HostConfig::load(path) {
        Ok(h) => h,
        Err(e) => {
            said("config", Err(format!("{e:#}")));
            return out;
        }
    };
    said(
        "config",
        private(path).map(|()| format!("{} parses", path.display())),
    );
    said("credentials", credential_files(&host));
    said(
        "secrets",
        host.secrets
            .check_all()
            .map(|()| "every secret resolves".to_string())
            .map_err(|e| format!("{e:#}")),
    );
    let Some(repo) = host.repository.clone() else {
        said("repository", Err("the config has no [repository]".into()));
        return out;
    };
    let server = host.server.clone();
    let webhook_secret = server.webhook_secret_file.clone();
    let opts = match super::dispatch::from_host(
        host,
        repo.url.clone(),
        repo.branch.clone(),
        super::dispatch::Overrides::default(),
    ) {
        Ok(o) => o,
        Err(e) => {
            said("options", Err(format!("{e:#}")));
            return out;
        }
    };
    let index = match remote(&opts).await {
        Ok((detail, index)) => {
            said("remote", Ok(detail));
            index
        }
        Err(e) => {
            said("remote", Err(e));
            None
        }
    };
    if let Some(forge) = &opts.git_auth {
        said(
            "forge",
            forge_permissions(forge, server.webhook_url.is_some()).await,
        );
        if let Some(url) = &server.webhook_url {
            let ops = operator_address(&opts.state_dir, server.metrics_listen.as_deref());
            said(
                "webhook",
                webhook(forge, url, webhook_secret.as_deref(), ops).await,
            );
        }
    }
    match &opts.executor {
        crate::exec::ExecutorChoice::Kubernetes(k) => said(
            "kubernetes",
            kubernetes(k, index.as_ref(), &opts.limits.runtimes).await,
        ),
        _ => said(
            "docker",
            docker(index.as_ref(), &opts.limits.runtimes).await,
        ),
    }
    said("listeners", listeners(&server, &opts.state_dir).await);
    out
}

/// The file is not readable by others.
fn private(path: &Path) -> Result<(), String> {
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} is mode {:o}: others may read it (chmod o-rwx)",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

fn credential_files(host: &HostConfig) -> Result<String, String> {
    let mut files: Vec<PathBuf> = host.server.webhook_secret_file.iter().cloned().collect();
    if let Some(f) = &host.forge {
        files.extend(f.token_file.clone());
        files.extend(f.app_key_file.clone());
    }
    files.extend(host.secrets.files().map(Path::to_path_buf));
    for f in &files {
        std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        private(f)?;
    }
    Ok(format!(
        "{} file(s) readable here and by no one else",
        files.len()
    ))
}

/// Fetch the branch into a mirror of its own, read the handler index there, and prove a push
/// would be taken (a probe ref pushed and deleted).
async fn remote(opts: &DispatchOptions) -> Result<(String, Option<HandlerIndex>), String> {
    let token = crate::engine::git_token(opts.git_auth.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || {
        // A mirror of its own, beside the daemon's (which may be fetching now), then gone.
        let scratch = opts.work_dir.join(format!("verify-{}", std::process::id()));
        let checked = fetch_and_push(&opts, &scratch, token.as_deref());
        let _ = std::fs::remove_dir_all(&scratch);
        checked
    })
    .await
    .map_err(|e| format!("the check stopped: {e}"))?
}

fn fetch_and_push(
    opts: &DispatchOptions,
    scratch: &Path,
    token: Option<&str>,
) -> Result<(String, Option<HandlerIndex>), String> {
    let mut mirror =
        crate::git::Mirror::open(scratch, &opts.remote, token).map_err(|e| format!("{e:#}"))?;
    mirror.set_shallow(true);
    mirror.set_attempts(2);
    let branch = opts.branch.clone().unwrap_or_else(|| "main".into());
    let tip = mirror
        .fetch(&branch)
        .map_err(|e| format!("fetch failed: {e:#}"))?
        .ok_or_else(|| format!("the remote has no branch {branch}"))?;
    let index = mirror
        .read_file(tip, INDEX_PATH)
        .ok()
        .flatten()
        .and_then(|b| HandlerIndex::parse(&b).ok());
    let probe = format!(
        "refs/codex/verify/{}-{}",
        opts.runner,
        crate::record::unix_ms()
    );
    match mirror.probe_push(&probe, &opts.identity) {
        Ok(Ok(())) => Ok((
            format!(
                "fetched {branch} at {}; a push was taken (and undone)",
                tip.short()
            ),
            index,
        )),
        Ok(Err(refusal)) => Err(format!(
            "fetched {branch}, but the remote refused a push: {refusal}"
        )),
        Err(e) => Err(format!("fetched {branch}, but pushing failed: {e:#}")),
    }
}

async fn forge_permissions(forge: &GitHub, hooks: bool) -> Result<String, String> {
    let p = forge.permissions().await.map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    if !p.read {
        missing.push("read the repository");
    }
    if !p.push {
        missing.push("push (contents: write)");
    }
    if hooks && !p.hooks {
        missing.push("manage webhooks");
    }
    if p.checks == Some(false) {
        missing.push("write check runs (checks: write)");
    }
    if missing.is_empty() {
        Ok(format!(
            "{} may read, push{}{}",
            forge.repo().name,
            if hooks { ", manage webhooks" } else { "" },
            match p.checks {
                Some(true) => ", write check runs",
                _ => "",
            }
        ))
    } else {
        Err(format!("the credentials cannot: {}", missing.join("; ")))
    }
}

/// The hook points here; when the daemon runs, a ping signed with the hook's secret is
/// accepted by it (so the secret matches the file).
async fn webhook(
    forge: &GitHub,
    url: &str,
    secret_file: Option<&Path>,
    ops: Option<String>,
) -> Result<String, String> {
    if secret_file.is_none() {
        return Err(
            "server.webhook_secret_file is not set: the daemon refuses every delivery".into(),
        );
    }
    let hooks = forge.hooks().await.map_err(|e| e.to_string())?;
    let Some((id, _)) = hooks.into_iter().find(|(_, u)| u == url) else {
        return Err(format!("no webhook points at {url} (register again)"));
    };
    let count = |outcome: &'static str| {
        let ops = ops.clone();
        async move {
            let addr = ops?;
            let text = operator_get(&addr, "/metrics")
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let name = format!("codex_runner_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
            Some(
                text.lines()
                    .find_map(|l| l.strip_prefix(&name)?.trim().parse::<f64>().ok())
                    .unwrap_or(0.0),
            )
        }
    };
    let (Some(pongs), Some(refused)) = (count("ping").await, count("bad_signature").await) else {
        return Ok(format!(
            "hook {id} points at {url}; its secret is checked only while the daemon runs"
        ));
    };
    // The daemon checks deliveries with the secret it read at start: the file must still hold it.
    if let (Some(file), Some(addr)) = (secret_file, &ops) {
        let running = daemon_status(addr).await;
        let held = std::fs::read_to_string(file)
            .map(|s| crate::server::ops::fingerprint(s.trim().as_bytes()))
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if let Some(running) = running["webhook_secret_sha256"].as_str() {
            if running != held {
                return Err(format!(
                    "the daemon checks deliveries with another secret than {} holds (restart it)",
                    file.display()
                ));
            }
        }
    }
    forge.ping_hook(id).await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + PING_WITHIN;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if count("bad_signature").await.is_some_and(|n| n > refused) {
            return Err(format!(
                "hook {id} points at {url}, but the daemon refused its ping: the secret in the webhook secret file is not the hook's (register again)"
            ));
        }
        if count("ping").await.is_some_and(|n| n > pongs) {
            return Ok(format!(
                "hook {id} points at {url}; the daemon accepted a ping signed with its secret"
            ));
        }
    }
    Err(format!(
        "hook {id} points at {url}, but the forge's ping did not reach the daemon within {}s (can the forge reach that URL?)",
        PING_WITHIN.as_secs()
    ))
}

/// The daemon's `/status` on `addr` (`null` when it does not answer).
async fn daemon_status(addr: &str) -> Value {
    let answer = async {
        operator_get(addr, "/status")
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
    };
    answer.await.unwrap_or(Value::Null)
}

/// The engine answers, has every runtime the host config allows, and every image the handler
/// index names is here (or is built here).
async fn docker(index: Option<&HandlerIndex>, runtimes: &[String]) -> Result<String, String> {
    let engine = crate::exec::docker::DockerExecutor::connect()
        .await
        .map_err(|e| format!("{e:#}"))?;
    let version = engine.version().await.map_err(|e| format!("{e:#}"))?;
    crate::exec::check_runtimes(&engine, runtimes)
        .await
        .map_err(|e| format!("engine {version}; {e:#}"))?;
    let Some(index) = index else {
        return Ok(format!("engine {version}; no handler index to name images"));
    };
    let (mut present, mut built, mut missing) = (0, 0, Vec::new());
    for spec in index.handlers.values() {
        match &spec.image {
            ImageSource::Reference(r) => match engine.ensure_image_present(r).await {
                Ok(()) => present += 1,
                Err(_) => missing.push(format!("{} ({})", r, spec.kind)),
            },
            ImageSource::Build(_) => built += 1,
        }
    }
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        Ok(format!(
            "engine {version}; {present} image(s) present, {built} built from containers/ on first use"
        ))
    } else {
        Err(format!(
            "engine {version}; not on this host (pulled at first use, or the request fails if no registry has them): {}",
            missing.join(", ")
        ))
    }
}

/// The API server answers, the runner may do what it needs in its namespace, the cluster has
/// every runtime the host config allows; no handler builds its image (a cluster cannot).
async fn kubernetes(
    config: &crate::exec::kubernetes::KubernetesConfig,
    index: Option<&HandlerIndex>,
    runtimes: &[String],
) -> Result<String, String> {
    let cluster = crate::exec::KubernetesExecutor::connect(config)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let about = cluster.access().await?;
    crate::exec::check_runtimes(&cluster, runtimes)
        .await
        .map_err(|e| format!("{about}; {e:#}"))?;
    let built: Vec<&str> = index
        .map(|i| {
            i.handlers
                .values()
                .filter(|h| matches!(h.image, ImageSource::Build(_)))
                .map(|h| h.kind.as_str())
                .collect()
        })
        .unwrap_or_default();
    let policy = match cluster.isolating_policy().await {
        Some(true) => "a NetworkPolicy isolates `network: none` pods",
        Some(false) => "no NetworkPolicy isolates `network: none` pods (apply docs/kubernetes/networkpolicy.yaml; the cluster's network plugin must enforce it)",
        None => "the runner may not list NetworkPolicies to tell whether its pods are isolated",
    };
    if built.is_empty() {
        Ok(format!(
            "{about}; the runner may do all it needs there; {policy}"
        ))
    } else {
        Err(format!(
            "{about}; handler(s) {} build their image from containers/, which a cluster cannot: push the image and name it in `image:`",
            built.join(", ")
        ))
    }
}

/// Each address can be listened on, or is the running daemon's.
async fn listeners(
    server: &crate::config::ServerConfig,
    state_dir: &Path,
) -> Result<String, String> {
    let daemon = operator_address(state_dir, None);
    let mut said = Vec::new();
    for (what, addr) in [
        ("webhook", Some(&server.listen)),
        ("metrics", server.metrics_listen.as_ref()),
    ] {
        let Some(addr) = addr else { continue };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(_) => said.push(format!("{what} {addr} free")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && daemon.is_some() => {
                said.push(format!("{what} {addr} in use by the running daemon"))
            }
            Err(e) => return Err(format!("cannot listen for the {what} on {addr}: {e}")),
        }
    }
    Ok(said.join("; "))
}
