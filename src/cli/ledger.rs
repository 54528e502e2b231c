//! `codex-runner logs ID` and `codex-runner migrate-layout`: reading a request's results from
//! the branch, and moving a repository's results from one layout to the other.

use crate::exit;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use crate::commit::CommitId;
use crate::contract::repo_config::{set_layout, Layout, RepoConfig, CONFIG_PATH};
use crate::contract::request::RequestId;
use crate::git::{Change, Identity, Mirror};
use crate::record::{relayout, Ledger, ResultFile, Status};

/// Where the repository is and which branch to read.
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// The repository: a path (read where it is, as its branch stands) or a git URL (fetched
    /// into the work directory).
    #[arg(long = "repo", env = "CODEX_RUNNER_REPO", default_value = ".")]
    pub repo: String,
    /// Branch [default: the mainline branch `codex.repo.yaml` names, else `main`].
    #[arg(long, env = "CODEX_RUNNER_BRANCH")]
    pub branch: Option<String>,
    /// Where a fetched repository is kept between runs [default: the user's cache directory].
    #[arg(long, env = "CODEX_RUNNER_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

/// Arguments of `logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The request's id (its file name without `.yaml`, unless the request sets `id:`).
    pub id: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print only the status.
    #[arg(long, env = "CODEX_RUNNER_STATUS")]
    pub status: bool,
    /// Print the status and every log event as one JSON document.
    #[arg(long, env = "CODEX_RUNNER_JSON")]
    pub json: bool,
}

/// Arguments of `migrate-layout`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The layout to move to: `sharded` (logs/ab/<id>.jsonl) or `flat` (logs/<id>.jsonl).
    #[arg(long, env = "CODEX_RUNNER_TO", default_value = "sharded", value_parser = parse_layout)]
    pub to: Layout,
    /// Say what would move; change nothing.
    #[arg(long, env = "CODEX_RUNNER_DRY_RUN")]
    pub dry_run: bool,
    /// Commit author name.
    #[arg(long, env = "CODEX_RUNNER_AUTHOR_NAME", default_value = "codex-runner")]
    pub author_name: String,
    /// Commit author email.
    #[arg(
        long,
        env = "CODEX_RUNNER_AUTHOR_EMAIL",
        default_value = "codex-runner@localhost"
    )]
    pub author_email: String,
    /// Push attempts before giving up (a moved branch is fetched and the move made again).
    #[arg(long, env = "CODEX_RUNNER_PUSH_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub push_attempts: u16,
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    Layout::from_name(s).ok_or_else(|| format!("`{s}` is neither sharded nor flat"))
}

/// The repository to read or change, its branch, that branch's tip and its contract.
struct Opened {
    mirror: Mirror,
    branch: String,
    tip: CommitId,
    config: RepoConfig,
}

/// `$XDG_CACHE_HOME/codex-runner/repos/<hash of the remote>`, or under `~/.cache`.
fn cache_dir(remote: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("codex-runner/repos")
        .join(format!("{:016x}", crate::engine::fnv1a(remote)))
}

/// Open `a.repo`: in place when only reading a local path, else a mirror in the work dir.
fn open(a: &RemoteArgs, read_only: bool) -> anyhow::Result<Opened> {
    let here = if read_only {
        Mirror::in_place(&a.repo)?
    } else {
        None
    };
    let mirror = if let Some(here) = here {
        here
    } else {
        let dir = a.work_dir.clone().unwrap_or_else(|| cache_dir(&a.repo));
        let mut mirror = Mirror::open(&dir, &a.repo, None)?;
        // Both commands read the tip only.
        mirror.set_shallow(true);
        mirror
    };
    let shown = mirror.shown_url();
    let contract = |tip: CommitId| -> anyhow::Result<RepoConfig> {
        match mirror.read_file(tip, CONFIG_PATH)? {
            Some(bytes) => RepoConfig::parse(&bytes)
                .map_err(|v| anyhow::anyhow!("{CONFIG_PATH} is broken:\n{v}")),
            None => Ok(RepoConfig::default()),
        }
    };
    let (branch, tip, config) = match &a.branch {
        Some(b) => {
            let tip = mirror
                .fetch(b)?
                .with_context(|| format!("branch `{b}` does not exist in {shown}"))?;
            (b.clone(), tip, contract(tip)?)
        }
        None => {
            let tip = mirror.fetch("main")?.with_context(|| {
                format!("branch `main` does not exist in {shown}; name the branch with --branch")
            })?;
            let config = contract(tip)?;
            if config.mainline_branch == "main" {
                ("main".to_string(), tip, config)
            } else {
                let b = config.mainline_branch.clone();
                let tip = mirror.fetch(&b)?.with_context(|| {
                    format!("the mainline branch `{b}` does not exist in {shown}")
                })?;
                (b, tip, contract(tip)?)
            }
        }
    };
    Ok(Opened {
        mirror,
        branch,
        tip,
        config,
    })
}

/// `codex-runner logs ID`.
pub fn logs(a: LogsArgs) -> i32 {
    match print_logs(&a) {
        Ok(found) => {
            if found {
                exit::OK
            } else {
                exit::FAILED
            }
        }
        Err(e) => {
            super::report_error(&e);
            exit::FAILED
        }
    }
}

fn print_logs(a: &LogsArgs) -> anyhow::Result<bool> {
    if let Err(why) = RequestId::parse(&a.id) {
        anyhow::bail!("{why}");
    }
    let o = open(&a.remote, true)?;
    let ledger = Ledger::of(&o.config);
    let read = |file: ResultFile| -> anyhow::Result<Option<(String, Vec<u8>)>> {
        for path in ledger.lookups(file, &a.id) {
            if let Some(bytes) = o.mirror.read_file(o.tip, &path)? {
                return Ok(Some((path, bytes)));
            }
        }
        Ok(None)
    };
    let Some((status_path, status_bytes)) = read(ResultFile::Status)? else {
        let inbox = ["yaml", "yml"]
            .iter()
            .map(|ext| format!("{}{}.{ext}", o.config.trigger_path, a.id))
            .find(|p| o.mirror.path_kind(o.tip, p).is_some());
        let looked = ledger.lookups(ResultFile::Status, &a.id).join(" and ");
        match inbox {
            Some(file) => eprintln!(
                "error: request `{}` has no result on `{}` yet: {file} is still in the inbox (looked for {looked})",
                a.id, o.branch
            ),
            None => eprintln!(
                "error: no request `{}` on `{}` of {}: neither {looked} exists",
                a.id,
                o.branch,
                o.mirror.shown_url()
            ),
        }
        return Ok(false);
    };
    let status: Status = serde_json::from_slice(&status_bytes)
        .with_context(|| format!("{status_path} on `{}` is not a status file", o.branch))?;
    let log = read(ResultFile::Log)?;
    let archived = ledger
        .lookups(ResultFile::Archived, &a.id)
        .into_iter()
        .find(|p| o.mirror.path_kind(o.tip, p).is_some());
    let events: Vec<Value> = log
        .as_ref()
        .map(|(_, bytes)| {
            String::from_utf8_lossy(bytes)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    if a.json {
        let doc = serde_json::json!({
            "branch": o.branch,
            "commit": o.tip.to_string(),
            "status_path": status_path,
            "log_path": log.as_ref().map(|(p, _)| p),
            "archived_path": archived,
            "status": status,
            "log": if a.status { Vec::new() } else { events },
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(true);
    }
    print!(
        "{}",
        summary(
            &status,
            &status_path,
            log.as_ref().map(|(p, _)| p.as_str()),
            archived.as_deref()
        )
    );
    if !a.status {
        println!();
        for e in &events {
            println!("{}", render_event(e));
        }
    }
    Ok(true)
}

/// The status as a few aligned lines.
fn summary(
    s: &Status,
    status_path: &str,
    log_path: Option<&str>,
    archived: Option<&str>,
) -> String {
    let mut head = format!("{}: {}", s.id, s.state.as_str());
    if let Some(code) = s.exit_code {
        head.push_str(&format!(" (exit {code})"));
    }
    head.push_str(&format!(
        " in {:.1}s, attempt {}",
        s.duration_ms as f64 / 1000.0,
        s.attempt
    ));
    let mut out = format!("{head}\n");
    let mut row = |k: &str, v: &str| out.push_str(&format!("  {k:<9} {v}\n"));
    if let Some(reason) = &s.reason {
        row("reason", reason.lines().next().unwrap_or_default());
    }
    row("kind", if s.kind.is_empty() { "-" } else { &s.kind });
    row("file", &s.file);
    row("commit", &s.commit.to_string());
    row("runner", &s.runner);
    if let Some(image) = &s.image {
        row("image", image);
    }
    if let Some(resource) = &s.resource {
        row("resource", resource);
    }
    if let Some(started) = &s.started_at {
        row("started", started);
    }
    row("finished", &s.finished_at);
    row("status", status_path);
    row("log", log_path.unwrap_or("(none)"));
    row("archived", archived.unwrap_or("(still in the inbox)"));
    out
}

/// One log event as a line: output as `ts stream | line`, the runner's events as `ts event k=v`.
fn render_event(e: &Value) -> String {
    let ts = e["ts"].as_str().unwrap_or_default();
    let event = e["event"].as_str().unwrap_or_default();
    if event == "output" {
        let stream = e["stream"].as_str().unwrap_or("out");
        return format!(
            "{ts} {stream:>6} | {}",
            e["line"].as_str().unwrap_or_default()
        );
    }
    let mut line = format!("{ts} {event}");
    if let Value::Object(map) = e {
        for (k, v) in map {
            if matches!(k.as_str(), "ts" | "id" | "event") {
                continue;
            }
            match v {
                Value::Null => {}
                Value::String(s) => line.push_str(&format!(" {k}={s}")),
                other => line.push_str(&format!(" {k}={other}")),
            }
        }
    }
    line
}

/// `codex-runner migrate-layout`.
pub fn migrate(a: MigrateArgs) -> i32 {
    match run_migration(&a) {
        Ok(()) => exit::OK,
        Err(e) => {
            super::report_error(&e);
            if e.downcast_ref::<ContractLeft>().is_some() {
                exit::CONTRACT
            } else {
                exit::GIT
            }
        }
    }
}

/// `codex.repo.yaml` cannot be changed by the migration: a person sets the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ContractLeft(String);

/// What a migration does at one tip.
struct Migration {
    /// (from, to) of every result file that moves.
    moves: Vec<(String, String)>,
    /// The new `codex.repo.yaml` (`None`: it names the layout already).
    contract: Option<String>,
}

/// The migration to `to` at `tip`.
fn plan_at(mirror: &Mirror, tip: CommitId, to: Layout) -> anyhow::Result<Migration> {
    let text = mirror.read_file(tip, CONFIG_PATH)?;
    let config = match &text {
        Some(bytes) => RepoConfig::parse(bytes)
            .map_err(|v| ContractLeft(format!("{CONFIG_PATH} is broken; mend it first:\n{v}")))?,
        None => RepoConfig::default(),
    };
    let ledger = Ledger::of(&config);
    let mut files = mirror.files_under(tip, &config.output_path)?;
    files.extend(mirror.files_under(tip, &config.processed_path)?);
    let moves = relayout(&files, &ledger, to);
    let contract = if config.layout == to {
        None
    } else {
        let old = text
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| {
                "repo:\n  purpose: infrastructure-orchestration\n  strategy: git-merge-execution\n"
                    .into()
            });
        Some(set_layout(&old, to).ok_or_else(|| {
            ContractLeft(format!(
                "could not set `layout: {}` in {CONFIG_PATH} (is `codex:` written in flow style?); set it by hand and run this again",
                to.as_str()
            ))
        })?)
    };
    Ok(Migration { moves, contract })
}

fn run_migration(a: &MigrateArgs) -> anyhow::Result<()> {
    let o = open(&a.remote, false)?;
    let Migration { moves, contract } = plan_at(&o.mirror, o.tip, a.to)?;
    if moves.is_empty() && contract.is_none() {
        println!(
            "{} on `{}` is already {}: nothing to move",
            o.mirror.shown_url(),
            o.branch,
            a.to.as_str()
        );
        return Ok(());
    }
    if a.dry_run {
        for (from, to) in &moves {
            println!("{from} -> {to}");
        }
        if contract.is_some() {
            println!("{CONFIG_PATH}: codex.layout: {}", a.to.as_str());
        }
        println!(
            "would move {} file(s) to the {} layout in one commit on `{}`",
            moves.len(),
            a.to.as_str(),
            o.branch
        );
        return Ok(());
    }
    let who = Identity {
        name: a.author_name.clone(),
        email: a.author_email.clone(),
    };
    let mut moved = 0usize;
    let build = |m: &Mirror, tip: CommitId| -> anyhow::Result<Vec<Change>> {
        // Made anew on every tip: results a runner pushed meanwhile move too.
        let Migration { moves, contract } = plan_at(m, tip, a.to)?;
        moved = moves.len();
        let mut changes: Vec<Change> = moves
            .into_iter()
            .map(|(from, to)| Change::Move { from, to })
            .collect();
        if let Some(text) = contract {
            changes.push(Change::Write {
                path: CONFIG_PATH.into(),
                bytes: text.into_bytes(),
            });
        }
        Ok(changes)
    };
    let message = format!(
        "codex: results move to the {} layout\n\nEvery log, status file and archived request moves to where `codex.layout: {}`\nputs it; `codex-runner logs ID` finds a request's results in either layout.\n",
        a.to.as_str(),
        a.to.as_str()
    );
    let published = o.mirror.publish_with(
        &o.branch,
        build,
        &message,
        &who,
        usize::from(a.push_attempts),
        &[],
    )?;
    println!(
        "moved {moved} file(s) to the {} layout on `{}` in {} ({} replay(s))",
        a.to.as_str(),
        o.branch,
        published.commit.short(),
        published.replays
    );
    Ok(())
}
