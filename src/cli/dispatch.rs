//! `codex-runner dispatch --once`: one full pass, then exit.

use crate::exit;
use std::path::{Path, PathBuf};

use tracing::Instrument;

use crate::config::{ForgeConfig, HostConfig};
use crate::engine::{dispatch_once, DispatchOptions, ForgeTarget, PassReport};
use crate::forge::{ForgeRepo, GitHub, Report};
use crate::git::Identity;

/// Arguments of `dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// Run one pass and exit (the long-running daemon is `codex-runner run`).
    #[arg(long, env = "CODEX_RUNNER_ONCE")]
    pub once: bool,
    /// Git remote: a URL (https, ssh, file://) or a path to a repository.
    #[arg(long = "repo", env = "CODEX_RUNNER_REPO")]
    pub repo: String,
    /// Branch to run from (default: the repository's mainline branch).
    #[arg(long, env = "CODEX_RUNNER_BRANCH")]
    pub branch: Option<String>,
    /// Host config (TOML) with the runner name, directories and limits.
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Work directory for the mirror and checkouts [default: <state-dir>/work].
    #[arg(long, env = "CODEX_RUNNER_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// State directory for results and locks [default: $XDG_STATE_HOME/codex-runner].
    #[arg(long, env = "CODEX_RUNNER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This runner's name, recorded in every status [default: the host name].
    #[arg(long, env = "CODEX_RUNNER_RUNNER_NAME")]
    pub runner_name: Option<String>,
    /// Requests on different resources that may run at once [default: cores].
    #[arg(long, env = "CODEX_RUNNER_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Labels this runner carries (added to the host config's), comma-separated.
    #[arg(long, env = "CODEX_RUNNER_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Commit author name.
    #[arg(long, env = "CODEX_RUNNER_AUTHOR_NAME")]
    pub author_name: Option<String>,
    /// Commit author email.
    #[arg(long, env = "CODEX_RUNNER_AUTHOR_EMAIL")]
    pub author_email: Option<String>,
    /// Push attempts (exponential back-off with jitter between them) before the pass gives up
    /// and keeps the results for the next pass.
    #[arg(long, env = "CODEX_RUNNER_PUSH_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub push_attempts: u16,
    /// Forge API base URL for check runs (e.g. https://api.github.com); needs --forge-repo
    /// and credentials: --forge-token-file, or the --forge-app-* flags.
    #[arg(long, env = "CODEX_RUNNER_FORGE_API", requires = "forge_repo")]
    pub forge_api: Option<String>,
    /// The repository on the forge, as OWNER/NAME.
    #[arg(long, env = "CODEX_RUNNER_FORGE_REPO", requires = "forge_api")]
    pub forge_repo: Option<String>,
    /// File holding the forge token (never passed on the command line, never logged).
    #[arg(long, env = "CODEX_RUNNER_FORGE_TOKEN_FILE", requires = "forge_api")]
    pub forge_token_file: Option<PathBuf>,
    /// GitHub App id (instead of a token; with --forge-app-key and --forge-installation-id).
    #[arg(long, env = "CODEX_RUNNER_FORGE_APP_ID", requires = "forge_api")]
    pub forge_app_id: Option<u64>,
    /// The GitHub App's private key (PEM file).
    #[arg(long, env = "CODEX_RUNNER_FORGE_APP_KEY", requires = "forge_api")]
    pub forge_app_key: Option<PathBuf>,
    /// The GitHub App's installation id.
    #[arg(
        long,
        env = "CODEX_RUNNER_FORGE_INSTALLATION_ID",
        requires = "forge_api"
    )]
    pub forge_installation_id: Option<u64>,
    /// How results show on the forge: check-runs or statuses.
    #[arg(long, env = "CODEX_RUNNER_FORGE_REPORT", requires = "forge_api", value_parser = parse_report)]
    pub forge_report: Option<Report>,
    /// Attempts per forge call before an update waits for the next pass.
    #[arg(long, env = "CODEX_RUNNER_FORGE_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub forge_attempts: u16,
    /// On SIGTERM or Ctrl-C, how long running handlers may finish before they are cancelled
    /// (a second signal cancels at once) [default: runner.drain_timeout, else 10m].
    #[arg(long, env = "CODEX_RUNNER_DRAIN_TIMEOUT", value_parser = parse_drain)]
    pub drain_timeout: Option<std::time::Duration>,
    /// Print the pass report as JSON on stdout.
    #[arg(long, env = "CODEX_RUNNER_JSON")]
    pub json: bool,
    /// Write the pass's metrics to this file (`*.prom`, for node_exporter's textfile
    /// collector), replaced whole whether the pass succeeds or fails.
    #[arg(long, env = "CODEX_RUNNER_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

pub use crate::config::host_name;

/// Build pass options from flags over the host config over defaults.
pub fn options(a: &DispatchArgs) -> anyhow::Result<DispatchOptions> {
    let host = match &a.config {
        Some(p) => HostConfig::load(p)?,
        None => HostConfig::default(),
    };
    let flags_forge = match (&a.forge_api, &a.forge_repo) {
        (Some(api), Some(repo)) => {
            let f = ForgeConfig {
                api_url: api.clone(),
                repository: repo.clone(),
                token_file: a.forge_token_file.clone(),
                app_id: a.forge_app_id,
                app_key_file: a.forge_app_key.clone(),
                installation_id: a.forge_installation_id,
                report: a.forge_report.unwrap_or_default(),
            };
            f.check()?;
            Some(f)
        }
        _ => None,
    };
    let overrides = Overrides {
        state_dir: a.state_dir.clone(),
        work_dir: a.work_dir.clone(),
        runner_name: a.runner_name.clone(),
        concurrency: a.concurrency,
        author_name: a.author_name.clone(),
        author_email: a.author_email.clone(),
        push_attempts: usize::from(a.push_attempts),
        labels: a.labels.clone(),
        forge: flags_forge,
        forge_attempts: usize::from(a.forge_attempts),
        drain_timeout: a.drain_timeout,
    };
    from_host(host, a.repo.clone(), a.branch.clone(), overrides)
}

/// Command-line values that win over the host config.
#[derive(Debug, Clone)]
pub struct Overrides {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--work-dir`.
    pub work_dir: Option<PathBuf>,
    /// `--runner-name`.
    pub runner_name: Option<String>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--author-name`.
    pub author_name: Option<String>,
    /// `--author-email`.
    pub author_email: Option<String>,
    /// `--push-attempts`.
    pub push_attempts: usize,
    /// `--labels`, added to the host config's.
    pub labels: Vec<String>,
    /// `--forge-*`.
    pub forge: Option<ForgeConfig>,
    /// `--forge-attempts`.
    pub forge_attempts: usize,
    /// `--drain-timeout`.
    pub drain_timeout: Option<std::time::Duration>,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            state_dir: None,
            work_dir: None,
            runner_name: None,
            concurrency: None,
            author_name: None,
            author_email: None,
            push_attempts: 8,
            labels: Vec::new(),
            forge: None,
            forge_attempts: 6,
            drain_timeout: None,
        }
    }
}

/// Pass options for `remote` from the host config, with `o` on top.
pub fn from_host(
    host: HostConfig,
    remote: String,
    branch: Option<String>,
    o: Overrides,
) -> anyhow::Result<DispatchOptions> {
    // Absolute: both are mounted into containers, and Docker takes a relative path for the
    // name of a volume.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let state_dir = absolute(
        o.state_dir
            .or(host.state_dir)
            .unwrap_or_else(super::paths::default_state_dir),
    );
    let mut labels = host.labels.clone();
    labels.extend(
        o.labels
            .iter()
            .filter(|l| !host.labels.contains(l))
            .cloned(),
    );
    // Every secret resolves now, or the runner does not start: a missing variable or file is
    // named here rather than in a handler's failure later.
    host.secrets.check_all()?;
    let (forge, git_auth) = match o.forge.or(host.forge) {
        Some(f) => {
            let target = forge_target(&f, o.forge_attempts)?;
            let auth = target.client.clone();
            (Some(target), Some(auth))
        }
        None => (None, None),
    };
    Ok(DispatchOptions {
        remote,
        branch,
        work_dir: absolute(
            o.work_dir
                .or(host.work_dir)
                .unwrap_or_else(|| state_dir.join("work")),
        ),
        state_dir,
        runner: o.runner_name.or(host.name).unwrap_or_else(host_name),
        concurrency: o
            .concurrency
            .or(host.concurrency)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        identity: Identity {
            name: o
                .author_name
                .or(host.author_name)
                .unwrap_or_else(|| "codex-runner".into()),
            email: o
                .author_email
                .or(host.author_email)
                .unwrap_or_else(|| "codex-runner@localhost".into()),
        },
        limits: host.limits,
        secrets: host.secrets,
        push_attempts: o.push_attempts,
        forge,
        git_auth,
        labels,
        shutdown: Default::default(),
        drain_timeout: o
            .drain_timeout
            .or(host.drain_timeout)
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        keep_recorded_claims: false,
        executor: host.executor.into(),
        metrics: crate::metrics::global(),
    })
}

/// `check-runs` or `statuses`.
fn parse_report(s: &str) -> Result<Report, String> {
    match s {
        "check-runs" => Ok(Report::CheckRuns),
        "statuses" => Ok(Report::Statuses),
        other => Err(format!("`{other}` is not check-runs or statuses")),
    }
}

/// The forge to report results to; its client's credentials serve git over http(s) too.
pub(crate) fn forge_target(f: &ForgeConfig, attempts: usize) -> anyhow::Result<ForgeTarget> {
    let (owner, name) = f
        .repository
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| anyhow::anyhow!("forge repository `{}` is not OWNER/NAME", f.repository))?;
    let credentials = f.credentials()?;
    let api = f.api_url.trim_end_matches('/').to_string();
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
    let client = GitHub::new(repo, &credentials)?
        .with_retries(attempts, std::time::Duration::from_millis(500));
    Ok(ForgeTarget {
        client,
        html_url: format!("{web}/{owner}/{name}"),
        report: f.report,
    })
}

/// How long running handlers may finish after SIGTERM, unless configured.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn parse_drain(s: &str) -> Result<std::time::Duration, String> {
    crate::contract::units::parse_duration(s)
}

/// Run `dispatch`.
pub async fn run(a: DispatchArgs) -> i32 {
    if !a.once {
        eprintln!("error: dispatch needs --once (one pass, then exit); the long-running daemon is a separate command");
        return exit::USAGE;
    }
    let opts = match options(&a) {
        Ok(o) => o,
        Err(e) => {
            super::report_error(&e);
            return exit::USAGE;
        }
    };
    if let Err(e) = opts.shutdown.on_signals(opts.drain_timeout) {
        super::report_error(&e);
        return exit::USAGE;
    }
    if let Err(e) = engine_has_runtimes(&opts).await {
        super::report_error(&e);
        return exit::USAGE;
    }
    if let Some(path) = &a.metrics_file {
        if path.extension().is_none_or(|e| e != "prom") {
            eprintln!(
                "error: --metrics-file {} must end in .prom: node_exporter's textfile collector reads no other file",
                path.display()
            );
            return exit::USAGE;
        }
    }
    let span = tracing::info_span!("dispatch", runner = %opts.runner);
    let result = dispatch_once(&opts).instrument(span).await;
    if let Some(path) = &a.metrics_file {
        if let Err(e) = write_metrics_file(path, &opts.metrics) {
            super::report_error(&e);
        }
    }
    match result {
        Ok(report) => {
            if a.json {
                let mut json = report_json(&report);
                crate::secrets::mask_json(&mut json);
                println!("{json}");
            } else {
                print!("{}", crate::secrets::mask(&summary(&report)));
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {}", crate::secrets::mask(&e.to_string()));
            e.exit_code()
        }
    }
}

/// Replace `path` with the metrics (written aside, then renamed, so the collector never
/// reads half a file). A failed pass keeps the last successful one's time from the file.
fn write_metrics_file(path: &Path, metrics: &crate::metrics::Metrics) -> anyhow::Result<()> {
    use anyhow::Context;
    const LAST: &str = "codex_runner_last_successful_pass_timestamp_seconds ";
    if let Some(last) = std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix(LAST)?.trim().parse::<f64>().ok())
    }) {
        metrics.remember_last_success(last);
    }
    let aside = path.with_extension("prom.tmp");
    std::fs::write(&aside, metrics.encode_prometheus_text())
        .and_then(|()| std::fs::rename(&aside, path))
        .with_context(|| format!("failed to write the metrics file {}", path.display()))
}

/// Check the engine has every runtime `limits.runtimes` allows handlers to name; a host config
/// the engine cannot honour stops the runner before any pass (exit 2).
pub async fn engine_has_runtimes(opts: &DispatchOptions) -> anyhow::Result<()> {
    if opts.limits.runtimes.is_empty() {
        return Ok(());
    }
    let executor = opts.executor.connect().await?;
    crate::exec::check_runtimes(executor.as_ref(), &opts.limits.runtimes).await
}

/// The pass report as JSON.
pub fn report_json(r: &PassReport) -> serde_json::Value {
    serde_json::json!({
        "branch": r.branch,
        "tip": r.tip,
        "requests": &r.items,
        "ignored": r.ignored.iter().map(|(p, why)| serde_json::json!({"path": p, "why": why})).collect::<Vec<_>>(),
        "deferred": r.deferred.iter().map(|(id, holder)| serde_json::json!({"id": id, "holder": holder})).collect::<Vec<_>>(),
        "commits": r.published.iter().map(|p| serde_json::json!({"commit": p.commit, "replays": p.replays})).collect::<Vec<_>>(),
        "round_trips": r.round_trips,
        "lifecycle": r.lifecycle,
    })
}

/// A readable summary of a pass.
pub fn summary(r: &PassReport) -> String {
    let mut out = String::new();
    let tip = r.tip.map_or_else(|| "-".to_string(), |t| t.short());
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
    for (id, holder) in &r.deferred {
        out.push_str(&format!("  left {id} to {holder}\n"));
    }
    for (p, why) in &r.ignored {
        out.push_str(&format!("  ignored {p}: {why}\n"));
    }
    for p in &r.published {
        out.push_str(&format!(
            "  pushed {} (replayed {}x)\n",
            p.commit.short(),
            p.replays
        ));
    }
    out
}
