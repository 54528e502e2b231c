//! `codex-runner dispatch --once`: one full pass, then exit.

use std::path::PathBuf;

use tracing::Instrument;

use anyhow::Context;

use crate::config::HostConfig;
use crate::engine::{dispatch_once, DispatchOptions, ForgeTarget, PassReport};
use crate::forge::{ForgeRepo, GitHub};
use crate::git::Identity;

/// Arguments of `dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// Run one pass and exit (the long-running daemon is `codex-runner run`).
    #[arg(long)]
    pub once: bool,
    /// Git remote: a URL (https, ssh, file://) or a path to a repository.
    #[arg(long = "repo")]
    pub repo: String,
    /// Branch to run from (default: the repository's mainline branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Host config (TOML) with the runner name, directories and limits.
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Work directory for the mirror and checkouts [default: <state-dir>/work].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// State directory for results and locks [default: $XDG_STATE_HOME/codex-runner].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// This runner's name, recorded in every status [default: the host name].
    #[arg(long)]
    pub runner_name: Option<String>,
    /// Requests on different resources that may run at once [default: cores].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Commit author name.
    #[arg(long)]
    pub author_name: Option<String>,
    /// Commit author email.
    #[arg(long)]
    pub author_email: Option<String>,
    /// Push attempts (exponential back-off with jitter between them) before the pass gives up
    /// and keeps the results for the next pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub push_attempts: u16,
    /// Forge API base URL for check runs (e.g. https://api.github.com); needs --forge-repo.
    #[arg(long, requires_all = ["forge_repo", "forge_token_file"])]
    pub forge_api: Option<String>,
    /// The repository on the forge, as OWNER/NAME.
    #[arg(long, requires = "forge_api")]
    pub forge_repo: Option<String>,
    /// File holding the forge token (never passed on the command line, never logged).
    #[arg(long, requires = "forge_api")]
    pub forge_token_file: Option<PathBuf>,
    /// Attempts per forge call before an update waits for the next pass.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub forge_attempts: u16,
    /// Print the pass report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("codex-runner");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/state/codex-runner");
    }
    PathBuf::from("/var/lib/codex-runner")
}

/// The host name, for the default runner name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "codex-runner".into())
}

/// Build pass options from flags over the host config over defaults.
pub fn options(a: &DispatchArgs) -> anyhow::Result<DispatchOptions> {
    let host = match &a.config {
        Some(p) => HostConfig::load(p)?,
        None => HostConfig::default(),
    };
    let state_dir = a
        .state_dir
        .clone()
        .or(host.state_dir)
        .unwrap_or_else(default_state_dir);
    Ok(DispatchOptions {
        remote: a.repo.clone(),
        branch: a.branch.clone(),
        work_dir: a
            .work_dir
            .clone()
            .or(host.work_dir)
            .unwrap_or_else(|| state_dir.join("work")),
        state_dir,
        runner: a
            .runner_name
            .clone()
            .or(host.name)
            .unwrap_or_else(host_name),
        concurrency: a
            .concurrency
            .or(host.concurrency)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        identity: Identity {
            name: a
                .author_name
                .clone()
                .or(host.author_name)
                .unwrap_or_else(|| "codex-runner".into()),
            email: a
                .author_email
                .clone()
                .or(host.author_email)
                .unwrap_or_else(|| "codex-runner@localhost".into()),
        },
        limits: host.limits,
        push_attempts: usize::from(a.push_attempts),
        forge: forge_target(a)?,
    })
}

/// The forge to report check runs to, from the `--forge-*` flags.
fn forge_target(a: &DispatchArgs) -> anyhow::Result<Option<ForgeTarget>> {
    let (Some(api), Some(repo), Some(token_file)) =
        (&a.forge_api, &a.forge_repo, &a.forge_token_file)
    else {
        return Ok(None);
    };
    let (owner, name) = repo
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| anyhow::anyhow!("--forge-repo `{repo}` is not OWNER/NAME"))?;
    let token = std::fs::read_to_string(token_file).with_context(|| {
        format!(
            "failed to read the forge token from {}",
            token_file.display()
        )
    })?;
    let token = token.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the forge token file {} is empty",
        token_file.display()
    );
    let api = api.trim_end_matches('/').to_string();
    let web = if api == "https://api.github.com" {
        "https://github.com".to_string()
    } else {
        api.trim_end_matches("/api/v3").to_string()
    };
    let repo = ForgeRepo {
        api_url: api,
        owner: owner.into(),
        name: name.into(),
    };
    let client = GitHub::with_token(repo, token)?.with_retries(
        usize::from(a.forge_attempts),
        std::time::Duration::from_millis(500),
    );
    Ok(Some(ForgeTarget {
        client,
        html_url: format!("{web}/{owner}/{name}"),
    }))
}

/// Run `dispatch`.
pub async fn run(a: DispatchArgs) -> i32 {
    if !a.once {
        eprintln!("error: dispatch needs --once (one pass, then exit); the long-running daemon is a separate command");
        return 2;
    }
    let opts = match options(&a) {
        Ok(o) => o,
        Err(e) => {
            super::report_error(&e);
            return 2;
        }
    };
    let span = tracing::info_span!("dispatch", runner = %opts.runner);
    match dispatch_once(&opts).instrument(span).await {
        Ok(report) => {
            if a.json {
                println!("{}", report_json(&report));
            } else {
                print!("{}", summary(&report));
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// The pass report as JSON.
pub fn report_json(r: &PassReport) -> serde_json::Value {
    serde_json::json!({
        "branch": r.branch,
        "tip": r.tip,
        "requests": &r.items,
        "ignored": r.ignored.iter().map(|(p, why)| serde_json::json!({"path": p, "why": why})).collect::<Vec<_>>(),
        "commits": r.published.iter().map(|p| serde_json::json!({"commit": p.commit, "replays": p.replays})).collect::<Vec<_>>(),
    })
}

/// A readable summary of a pass.
pub fn summary(r: &PassReport) -> String {
    let mut out = String::new();
    let tip = r.tip.as_deref().map_or("-", |t| &t[..t.len().min(12)]);
    out.push_str(&format!(
        "pass on {} at {tip}: {} request(s)\n",
        r.branch,
        r.items.len()
    ));
    if !r.items.is_empty() {
        out.push_str(&format!(
            "  {:<28} {:<8} {:<10} {:>8}  {}\n",
            "ID", "KIND", "STATE", "TIME", "REASON"
        ));
    }
    for s in &r.items {
        let reason = s
            .reason
            .as_deref()
            .and_then(|r| r.lines().next())
            .unwrap_or("");
        out.push_str(&format!(
            "  {:<28} {:<8} {:<10} {:>7}ms  {}\n",
            s.id,
            if s.kind.is_empty() { "-" } else { &s.kind },
            s.state.as_str(),
            s.duration_ms,
            reason
        ));
    }
    for (p, why) in &r.ignored {
        out.push_str(&format!("  ignored {p}: {why}\n"));
    }
    for p in &r.published {
        out.push_str(&format!(
            "  pushed {} (replayed {}x)\n",
            &p.commit[..p.commit.len().min(12)],
            p.replays
        ));
    }
    out
}
