//! `codex-runner status`: what the runner on this host is doing, from its state directory and
//! from the daemon's own `/status` on the operator's listener.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::config::HostConfig;
use crate::exit;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Host config [default: as `register`].
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// `text` (a line each) or `json`.
    #[arg(long, env = "CODEX_RUNNER_FORMAT", value_enum, default_value = "text")]
    pub format: super::ReportFormat,
}

/// How long the daemon has to answer.
const ASK_WITHIN: Duration = Duration::from_secs(3);

/// Run `status`: 0 when the daemon answers, 1 when it does not (the backlog is shown either
/// way), 2 when there is no config to read.
pub async fn run(a: StatusArgs) -> i32 {
    let path = super::paths::config_or_default(a.config.clone());
    let host = match HostConfig::load(&path) {
        Ok(h) => h,
        Err(e) => {
            super::report_error(&e);
            return exit::USAGE;
        }
    };
    let Some(repo) = host.repository.clone() else {
        eprintln!(
            "error: {} has no [repository]: no runner is configured there",
            path.display()
        );
        return exit::USAGE;
    };
    let state_dir = host
        .state_dir
        .clone()
        .unwrap_or_else(super::paths::default_state_dir);
    let held = crate::engine::backlog(&state_dir, &repo.url);
    let daemon = match operator_address(&state_dir, host.server.metrics_listen.as_deref()) {
        Some(addr) => ask(&addr).await.map_err(|e| format!("{e:#}")),
        None => Err("server.metrics_listen is off: the daemon is not asked".into()),
    };
    let report = json!({
        "config": path,
        "repository": repo.url,
        "state_dir": state_dir,
        "results_waiting": held.results,
        "attempts_unfinished": held.attempts,
        "check_updates_waiting": held.check_updates,
        "daemon": match &daemon { Ok(v) => v.clone(), Err(why) => json!({"answering": false, "why": why}) },
    });
    match a.format {
        super::ReportFormat::Json => println!("{report}"),
        super::ReportFormat::Text => print!("{}", text(&report, &daemon)),
    }
    if daemon.is_ok() {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// `/status` of the daemon on `addr`.
async fn ask(addr: &str) -> anyhow::Result<Value> {
    let answer = operator_get(addr, "/status").await?;
    let mut v: Value = answer
        .json()
        .await
        .context("the daemon's /status is not JSON")?;
    v["answering"] = json!(true);
    Ok(v)
}

/// `GET path` on the daemon's operator listener at `addr` (loopback, no proxy, a few seconds
/// to answer); a non-success status is an error.
pub(super) async fn operator_get(addr: &str, path: &str) -> anyhow::Result<reqwest::Response> {
    let answer = reqwest::Client::builder()
        .timeout(ASK_WITHIN)
        .no_proxy()
        .build()?
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .with_context(|| format!("the daemon does not answer on {addr}"))?;
    anyhow::ensure!(
        answer.status().is_success(),
        "the daemon on {addr} answered {} to {path}",
        answer.status()
    );
    Ok(answer)
}

/// Where the daemon's operator listener answers: where the running daemon noted it in the
/// state directory (its port may be the system's choice), else where the config says.
pub(super) fn operator_address(
    state_dir: &std::path::Path,
    configured: Option<&str>,
) -> Option<String> {
    std::fs::read(state_dir.join(super::run::DAEMON_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["operator"].as_str().map(str::to_string))
        .or(configured.map(str::to_string))
}

fn text(report: &Value, daemon: &Result<Value, String>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    line("config", s(&report["config"]));
    line("repository", s(&report["repository"]));
    match daemon {
        Ok(d) => {
            line(
                "daemon",
                format!(
                    "answering; runner {} on branch {}",
                    s(&d["runner"]),
                    s(&d["branch"])
                ),
            );
            line("running", s(&d["running"]));
            line("queued", s(&d["queued"]));
            line(
                "passes",
                format!("{} ({} failed)", s(&d["passes"]), s(&d["failed_passes"])),
            );
            line(
                "last pass",
                match d["last_error"].as_str() {
                    Some(e) => format!("failed: {e}"),
                    None if d["passes"] == 0 => "none yet".into(),
                    None => "succeeded".into(),
                },
            );
        }
        Err(why) => line("daemon", format!("not answering: {why}")),
    }
    line("results waiting", s(&report["results_waiting"]));
    line("attempts unfinished", s(&report["attempts_unfinished"]));
    line("check updates waiting", s(&report["check_updates_waiting"]));
    out
}
