//! `codex-runner register` and `unregister`: join a repository on the forge, and leave it.
//!
//! register checks what the credentials may do (naming each missing permission), points a
//! webhook at the runner (updating the one already at that URL), and writes the host config
//! (mode 0600) that `codex-runner run` reads. The token (or the GitHub App's key) stays in its
//! own file; the config only names it.
//!
//! Results show as check runs where the credentials can write them, and as commit statuses
//! where they cannot (a plain token on github.com): `--report auto` finds out by trying.

use crate::exit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::config::{ForgeConfig, HostConfig};
use crate::contract::units::{format_duration, format_size};
use crate::forge::{CheckState, CheckUpdate, Conclusion, ForgeRepo, GitHub, Report};

/// Arguments of `register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The repository's web URL, e.g. https://github.com/OWNER/REPO.
    #[arg(long, env = "CODEX_RUNNER_URL")]
    pub url: String,
    /// API base URL [default: https://api.github.com for github.com, <host>/api/v3 otherwise].
    #[arg(long, env = "CODEX_RUNNER_API_URL")]
    pub api_url: Option<String>,
    /// Git URL [default: the repository URL with .git].
    #[arg(long, env = "CODEX_RUNNER_GIT_URL")]
    pub git_url: Option<String>,
    /// File holding a personal or fine-grained token.
    #[arg(
        long,
        env = "CODEX_RUNNER_TOKEN_FILE",
        required_unless_present = "app_id",
        conflicts_with = "app_id"
    )]
    pub token_file: Option<PathBuf>,
    /// GitHub App id, to run as the App's installation instead of with a token.
    #[arg(long, env = "CODEX_RUNNER_APP_ID", requires_all = ["app_key", "installation_id"])]
    pub app_id: Option<u64>,
    /// The GitHub App's private key (PEM file, as GitHub hands it out).
    #[arg(long, env = "CODEX_RUNNER_APP_KEY", requires = "app_id")]
    pub app_key: Option<PathBuf>,
    /// The App's installation id on the repository's owner.
    #[arg(long, env = "CODEX_RUNNER_INSTALLATION_ID", requires = "app_id")]
    pub installation_id: Option<u64>,
    /// How results show: check-runs, statuses, or auto (check runs when they can be written,
    /// commit statuses otherwise).
    #[arg(long, env = "CODEX_RUNNER_REPORT", default_value = "auto", value_parser = ["auto", "check-runs", "statuses"])]
    pub report: String,
    /// This runner's name.
    #[arg(long, env = "CODEX_RUNNER_NAME")]
    pub name: String,
    /// Labels this runner carries, comma-separated.
    #[arg(long, env = "CODEX_RUNNER_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Public URL of this runner's /webhook; without it the runner polls.
    #[arg(long, env = "CODEX_RUNNER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Address the daemon listens on.
    #[arg(long, env = "CODEX_RUNNER_LISTEN", default_value = "127.0.0.1:8733")]
    pub listen: String,
    /// Address the daemon serves /metrics on (`off`: not served).
    #[arg(
        long,
        env = "CODEX_RUNNER_METRICS_LISTEN",
        default_value = "127.0.0.1:8734"
    )]
    pub metrics_listen: String,
    /// Where to write the host config [default: /etc/codex-runner/runner.toml as root, else
    /// ~/.config/codex-runner/runner.toml].
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory written into the config [default: as `dispatch`].
    #[arg(long, env = "CODEX_RUNNER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Arguments of `unregister`.
#[derive(Debug, clap::Args)]
pub struct UnregisterArgs {
    /// The host config `register` wrote [default: as `register`].
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `(api_url, git_url, owner, name)` from a repository web URL.
pub fn parse_repo_url(
    url: &str,
    api: Option<&str>,
    git: Option<&str>,
) -> anyhow::Result<(String, String, String, String)> {
    let trimmed = url.trim_end_matches('/').trim_end_matches(".git");
    let (scheme, rest) = trimmed
        .split_once("://")
        .context("the repository URL needs a scheme (https://...)")?;
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        bail!("`{url}` is not a repository URL of the form {scheme}://HOST/OWNER/REPO");
    };
    anyhow::ensure!(
        !host.is_empty() && !owner.is_empty() && !name.is_empty(),
        "`{url}` is not a repository URL"
    );
    let api = match api {
        Some(a) => a.trim_end_matches('/').to_string(),
        None if host == "github.com" => "https://api.github.com".to_string(),
        None => format!("{scheme}://{host}/api/v3"),
    };
    let git = git
        .map(str::to_string)
        .unwrap_or_else(|| format!("{trimmed}.git"));
    Ok((api, git, owner.to_string(), name.to_string()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))
}

fn new_secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("failed to read /dev/urandom for the webhook secret")?;
    Ok(hex::encode(bytes))
}

/// Run `register`.
pub async fn register(a: RegisterArgs) -> i32 {
    match do_register(a).await {
        Ok(r) => {
            if let Some(hook) = &r.hook {
                println!("{hook}");
            }
            println!("{}", r.summary);
            println!(
                "next: sudo codex-runner install --config {} (a hardened systemd service), or codex-runner run --config {} in the foreground",
                r.config.display(),
                r.config.display()
            );
            exit::OK
        }
        Err(e) => {
            super::report_error(&e);
            exit::FAILED
        }
    }
}

/// What `register` did, for the caller to tell.
pub struct Registered {
    /// The config written.
    pub config: PathBuf,
    /// The webhook created or updated, in words.
    pub hook: Option<String>,
    /// One line: who, where, how results show.
    pub summary: String,
}

pub async fn do_register(a: RegisterArgs) -> anyhow::Result<Registered> {
    let (api, git_url, owner, name) =
        parse_repo_url(&a.url, a.api_url.as_deref(), a.git_url.as_deref())?;
    let absolute = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        p.as_ref()
            .map(|p| std::path::absolute(p).context("failed to resolve a credentials path"))
            .transpose()
    };
    let mut forge_cfg = ForgeConfig {
        api_url: api.clone(),
        repository: format!("{owner}/{name}"),
        token_file: absolute(&a.token_file)?,
        app_id: a.app_id,
        app_key_file: absolute(&a.app_key)?,
        installation_id: a.installation_id,
        report: Report::CheckRuns,
    };
    let whose = match (&forge_cfg.token_file, forge_cfg.app_id) {
        (Some(f), _) => format!("the token in {}", f.display()),
        (None, Some(id)) => format!("GitHub App {id}"),
        (None, None) => "the credentials".into(),
    };
    let forge = GitHub::new(
        ForgeRepo {
            api_url: api.clone(),
            owner: owner.clone(),
            name: name.clone(),
        },
        &forge_cfg.credentials()?,
    )?;

    let perms = forge
        .permissions()
        .await
        .with_context(|| format!("{whose} cannot read the repository"))?;
    let mut missing = Vec::new();
    if !perms.read {
        missing.push("read the repository (contents: read)");
    }
    if !perms.push {
        missing.push("push to main (contents: write)");
    }
    if a.webhook_url.is_some() && !perms.hooks {
        missing.push(if forge.is_app() {
            "manage webhooks (repository_hooks: write, or drop --webhook-url and poll)"
        } else {
            "manage webhooks (administration: write, or drop --webhook-url and poll)"
        });
    }
    if missing.is_empty() {
        // Writing results can only be proven by writing one, on the tip of main.
        let token = forge.git_token().await?;
        let tip = tokio::task::spawn_blocking({
            let g = git_url.clone();
            move || crate::git::remote_tip(&g, "main", Some(&token))
        })
        .await??;
        if let Some(sha) = tip {
            match probe(&forge, &a, &sha.to_string(), perms.checks).await {
                Ok(report) => forge_cfg.report = report,
                Err(what) => missing.push(what),
            }
        }
    }
    if !missing.is_empty() {
        bail!("{whose} cannot: {}", missing.join("; "));
    }

    let config = super::paths::config_or_default(a.config.clone());
    let config = std::path::absolute(&config).context("failed to resolve the config path")?;
    let mut server = toml::Table::new();
    server.insert("listen".into(), a.listen.clone().into());
    server.insert("metrics_listen".into(), a.metrics_listen.clone().into());
    let mut hook_line = None;
    if let Some(url) = &a.webhook_url {
        let secret = new_secret()?;
        let hook = forge
            .upsert_hook(url, &secret)
            .await
            .context("failed to create the webhook")?;
        let secret_file = config.with_file_name("webhook-secret");
        write_private(&secret_file, &secret)?;
        server.insert("webhook_url".into(), url.clone().into());
        server.insert(
            "webhook_secret_file".into(),
            secret_file.display().to_string().into(),
        );
        hook_line = Some(format!("webhook {hook} on {owner}/{name} -> {url}"));
    }
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(super::paths::default_state_dir);
    let mut runner = toml::Table::new();
    runner.insert("name".into(), a.name.clone().into());
    runner.insert(
        "labels".into(),
        toml::Value::Array(a.labels.iter().map(|l| l.clone().into()).collect()),
    );
    runner.insert("state_dir".into(), state_dir.display().to_string().into());
    runner.insert(
        "work_dir".into(),
        state_dir.join("work").display().to_string().into(),
    );
    // The executor's ceilings, written out so the operator sees and tunes them in one place.
    let l = crate::config::HostLimits::default();
    let mut limits = toml::Table::new();
    limits.insert("max_memory".into(), format_size(l.max_memory).into());
    limits.insert("max_pids".into(), toml::Value::Integer(l.max_pids));
    limits.insert("max_cpus".into(), toml::Value::Float(l.max_cpus));
    limits.insert("max_tmpfs".into(), format_size(l.max_tmpfs).into());
    limits.insert("max_timeout".into(), format_duration(l.max_timeout).into());
    limits.insert("grace".into(), format_duration(l.grace).into());
    limits.insert("output_cap".into(), format_size(l.output_cap).into());
    limits.insert("allow_network_host".into(), l.allow_network_host.into());
    limits.insert("allow_root".into(), l.allow_root.into());
    limits.insert("allow_writable_root".into(), l.allow_writable_root.into());
    limits.insert(
        "runtimes".into(),
        toml::Value::Array(l.runtimes.iter().map(|r| r.clone().into()).collect()),
    );
    let mut repository = toml::Table::new();
    repository.insert("url".into(), git_url.clone().into());
    let mut forge_t = toml::Table::new();
    forge_t.insert("api_url".into(), api.into());
    forge_t.insert("repository".into(), format!("{owner}/{name}").into());
    if let Some(f) = &forge_cfg.token_file {
        forge_t.insert("token_file".into(), f.display().to_string().into());
    }
    if let (Some(id), Some(key), Some(inst)) = (
        forge_cfg.app_id,
        &forge_cfg.app_key_file,
        forge_cfg.installation_id,
    ) {
        forge_t.insert("app_id".into(), toml::Value::Integer(id.try_into()?));
        forge_t.insert("app_key_file".into(), key.display().to_string().into());
        forge_t.insert(
            "installation_id".into(),
            toml::Value::Integer(inst.try_into()?),
        );
    }
    forge_t.insert("report".into(), forge_cfg.report.as_str().into());
    let mut doc = toml::Table::new();
    doc.insert("runner".into(), runner.into());
    doc.insert("repository".into(), repository.into());
    doc.insert("server".into(), server.into());
    doc.insert("forge".into(), forge_t.into());
    doc.insert("limits".into(), limits.into());
    let text = format!(
        "# Written by `codex-runner register`; read by `codex-runner run`.\n{}",
        toml::to_string(&doc)?
    );
    write_private(&config, &text)?;
    HostConfig::load(&config).context("the written config does not load back")?;
    Ok(Registered {
        summary: format!(
            "registered runner {} for {owner}/{name}; results as {}; config in {} (mode 0600)",
            a.name,
            forge_cfg.report.as_str(),
            config.display()
        ),
        config,
        hook: hook_line,
    })
}

/// Prove the runner can show results, by showing one on `sha`: a check run where `--report`
/// allows and the credentials can (`can_checks`, when the forge said), else a commit status.
async fn probe(
    forge: &GitHub,
    a: &RegisterArgs,
    sha: &str,
    can_checks: Option<bool>,
) -> Result<Report, &'static str> {
    let update = CheckUpdate {
        name: "codex-runner/register".into(),
        head_sha: sha.to_string(),
        external_id: format!("register-{}", a.name),
        state: CheckState::Completed(Conclusion::Success),
        started_at: None,
        title: format!("runner {} registered", a.name),
        summary: format!("Runner `{}` can report on this repository.", a.name),
        text: None,
        details_url: None,
        annotations: Vec::new(),
    };
    let checks_error = "write checks (checks: write; on github.com check runs need a GitHub App; or --report statuses)";
    if a.report != "statuses" && can_checks != Some(false) {
        match forge.publish_check(&update, None).await {
            Ok(_) => return Ok(Report::CheckRuns),
            Err(e) if a.report == "check-runs" => {
                tracing::warn!(error = %e, "check run refused");
                return Err(checks_error);
            }
            Err(e) => {
                tracing::info!(error = %e, "check runs cannot be written; trying commit statuses")
            }
        }
    } else if a.report == "check-runs" {
        return Err(checks_error);
    }
    match forge.publish_status(&update).await {
        Ok(()) => Ok(Report::Statuses),
        Err(e) => {
            tracing::warn!(error = %e, "commit status refused");
            Err("write check runs or commit statuses (checks: write, or statuses: write)")
        }
    }
}

/// Run `unregister`.
pub async fn unregister(a: UnregisterArgs) -> i32 {
    let result = async {
        let path = super::paths::config_or_default(a.config.clone());
        let host = HostConfig::load(&path)?;
        if let (Some(f), Some(url)) = (&host.forge, &host.server.webhook_url) {
            let (owner, name) = f
                .repository
                .split_once('/')
                .context("forge.repository is not OWNER/NAME")?;
            let forge = GitHub::new(
                ForgeRepo {
                    api_url: f.api_url.clone(),
                    owner: owner.into(),
                    name: name.into(),
                },
                &f.credentials()?,
            )?;
            let n = forge
                .delete_hooks_to(url)
                .await
                .context("failed to delete the webhook")?;
            println!("deleted {n} webhook(s) pointing at {url}");
        }
        if let Some(secret) = &host.server.webhook_secret_file {
            let _ = std::fs::remove_file(secret);
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("failed to remove {}", path.display()))?;
        println!("removed {}", path.display());
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            super::report_error(&e);
            exit::FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls() {
        let (api, git, o, n) = parse_repo_url("https://github.com/acme/ops", None, None).unwrap();
        assert_eq!(
            (api.as_str(), git.as_str(), o.as_str(), n.as_str()),
            (
                "https://api.github.com",
                "https://github.com/acme/ops.git",
                "acme",
                "ops"
            )
        );
        let (api, ..) = parse_repo_url("https://ghe.example/acme/ops.git", None, None).unwrap();
        assert_eq!(api, "https://ghe.example/api/v3");
        assert!(parse_repo_url("https://github.com/acme", None, None).is_err());
        assert!(parse_repo_url("github.com/acme/ops", None, None).is_err());
    }
}
