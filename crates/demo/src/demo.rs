//! The demo (`codex-runner-demo`): the whole loop on this machine, with nothing but Docker.
//!
//! It creates a bare repository from the embedded template, merges a "pull request" that adds
//! example requests (one of them broken), runs one pass against it, and prints a timeline.

use codex_runner::exit;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use codex_runner::config::HostLimits;
use codex_runner::engine::{dispatch_once, DispatchOptions};
use codex_runner::git::seed::{SeedFile, SeedRepo};
use codex_runner::git::Identity;
use codex_runner::record::Status;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep everything in this directory (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only the git side: a bare repository and one `dispatch --once`, no forge.
    #[arg(long)]
    pub git_only: bool,
}

const REQUESTS: &[(&str, &str)] = &[
    ("requests/hello.yaml", "kind: echo\nparams:\n  message: hello from a merged pull request\n"),
    ("requests/deploy-web.yaml", "kind: deploy\nparams:\n  service: web\n  version: v1.4.2\n  environment: staging\n  steps: 2\n"),
    ("requests/deploy-api.yaml", "kind: deploy\nparams:\n  service: api\n  version: v2.0.0\n  environment: staging\n  steps: 2\n"),
    ("requests/backup-orders.yaml", "kind: backup\nparams:\n  database: orders\n  retention_days: 30\n"),
    ("requests/typo.yaml", "kind: deplyo\nparams:\n  service: web\n"),
];

/// Run the demo.
pub async fn run(a: DemoArgs) -> i32 {
    match demo(a).await {
        Ok(code) => code,
        Err(e) => {
            codex_runner::cli::report_error(&e);
            exit::FAILED
        }
    }
}

async fn demo(a: DemoArgs) -> anyhow::Result<i32> {
    if !a.git_only {
        let _tmp;
        let root = match &a.dir {
            Some(d) => d.clone(),
            None => {
                _tmp = TempDir::new()?;
                _tmp.0.clone()
            }
        };
        return crate::forge::run(&root).await;
    }
    let clock = Instant::now();
    let step = |msg: String| println!("[{:>6.2}s] {msg}", clock.elapsed().as_secs_f64());
    let _tmp;
    let root = match a.dir {
        Some(d) => d,
        None => {
            _tmp = TempDir::new()?;
            _tmp.0.clone()
        }
    };
    let origin_dir = root.join("origin.git");
    let origin = SeedRepo::init_bare(&origin_dir)?;
    let template = crate::template::seed_files();
    let base = origin.commit(
        "refs/heads/main",
        &[],
        &template,
        "Start an operations repository from the codex-runner template",
    )?;
    step(format!(
        "created {} with the template on main",
        origin_dir.display()
    ));

    let requests = SeedFile::texts(REQUESTS);
    let branch = origin.commit(
        "refs/heads/agent/rollout",
        &[base],
        &requests,
        "Add rollout requests",
    )?;
    step(format!(
        "an agent opened a pull request adding {} requests on agent/rollout",
        REQUESTS.len()
    ));
    let unmerged = origin.commit(
        "refs/heads/agent/unreviewed",
        &[base],
        &[SeedFile {
            path: "requests/not-merged.yaml",
            bytes: b"kind: echo\nparams:\n  message: must never run\n",
            executable: false,
        }],
        "An unreviewed request",
    )?;
    step(format!(
        "another branch adds requests/not-merged.yaml but is not merged ({})",
        &unmerged.to_string()[..10]
    ));
    let merge = origin.merge(base, branch, "Merge pull request #1 from agent/rollout")?;
    step(format!(
        "pull request #1 merged to main as {}",
        &merge.to_string()[..10]
    ));

    let opts = DispatchOptions {
        remote: origin_dir.to_string_lossy().into_owned(),
        branch: None,
        work_dir: root.join("runner/work"),
        state_dir: root.join("runner/state"),
        runner: "demo-git-runner".into(),
        concurrency: 2,
        identity: Identity {
            name: "codex-runner".into(),
            email: "codex-runner@localhost".into(),
        },
        limits: HostLimits::default(),
        secrets: Default::default(),
        push_attempts: 5,
        forge: None,
        git_auth: None,
        shutdown: Default::default(),
        drain_timeout: codex_runner::cli::dispatch::DEFAULT_DRAIN_TIMEOUT,
        labels: Vec::new(),
        keep_recorded_claims: false,
        executor: Default::default(),
        metrics: codex_runner::metrics::global(),
    };
    step("codex-runner dispatch --once: fetch main, plan, run in Docker, push".into());
    let report = match dispatch_once(&opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, codex_runner::engine::DispatchError::Docker(_)) {
                eprintln!("hint: start dockerd and build the example images: bash containers/build-images.sh");
            }
            return Ok(e.exit_code());
        }
    };
    let mut statuses: Vec<&Status> = report.items.iter().collect();
    statuses.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    for s in &statuses {
        let what = match s.state {
            codex_runner::record::State::Succeeded => format!("succeeded in {} ms", s.duration_ms),
            _ => format!(
                "{}: {}",
                s.state.as_str(),
                s.reason
                    .as_deref()
                    .and_then(|r| r.lines().next())
                    .unwrap_or("")
            ),
        };
        let at = s
            .started_at
            .as_deref()
            .map(|t| &t[11..23])
            .unwrap_or("never ran   ");
        step(format!(
            "  {at}  {:<14} {:<7} lock {:<20} {what}",
            s.id,
            s.kind,
            s.resource.as_deref().unwrap_or("-")
        ));
    }
    for p in &report.published {
        step(format!(
            "pushed {} to main (replays: {})",
            p.commit.short(),
            p.replays
        ));
    }
    println!("\nmain now reads, newest first:");
    for line in origin.history(4)? {
        println!("  {line}");
    }
    let ledger = template_ledger();
    println!("\n{} on main (first lines):", ledger.log("deploy-web"));
    if let Some(log) = origin.read_main(&ledger.log("deploy-web"))? {
        for line in String::from_utf8_lossy(&log).lines().take(6) {
            println!("  {line}");
        }
    }
    println!("\n{} on main:", ledger.status("typo"));
    if let Some(s) = origin.read_main(&ledger.status("typo"))? {
        for line in String::from_utf8_lossy(&s).lines() {
            println!("  {line}");
        }
    }
    let never = origin.read_main(&ledger.log("not-merged"))?.is_none();
    println!(
        "\nrequests/not-merged.yaml on the unmerged branch ran: {}",
        if never { "no" } else { "YES (bug)" }
    );
    let ok = statuses
        .iter()
        .filter(|s| s.state == codex_runner::record::State::Succeeded)
        .count();
    println!(
        "{ok} succeeded, {} rejected, {} other, in {:.1}s",
        statuses
            .iter()
            .filter(|s| s.state == codex_runner::record::State::Rejected)
            .count(),
        statuses.len()
            - ok
            - statuses
                .iter()
                .filter(|s| s.state == codex_runner::record::State::Rejected)
                .count(),
        clock.elapsed().as_secs_f64()
    );
    Ok(exit::OK)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir().join(format!("codex-demo-{}", std::process::id()));
        std::fs::create_dir_all(&base)
            .with_context(|| format!("failed to create {}", base.display()))?;
        Ok(TempDir(base))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the template's `codex.repo.yaml` puts results.
pub fn template_ledger() -> codex_runner::record::Ledger {
    let config = codex_runner::contract::repo_config::RepoConfig::parse(include_bytes!(
        "../../../codex.repo.yaml"
    ))
    .unwrap_or_default();
    codex_runner::record::Ledger::of(&config)
}
