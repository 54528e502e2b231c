//! `codex-runner run --config PATH`: the long-running daemon.
//!
//! One worker runs passes one at a time; webhooks and the poller only ask for a pass, and
//! asks that arrive while one is pending collapse into it. SIGTERM or Ctrl-C drains: no new
//! request starts, running handlers may finish until `runner.drain_timeout`, then they are
//! cancelled (a second signal cancels at once); every result is pushed before it exits.

use crate::commit::CommitId;
use crate::exit;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::Instrument;

use crate::config::HostConfig;
use crate::engine::shutdown::Stage;
use crate::engine::{
    dispatch_once, release_claims, validate_pull, validation_update, DispatchOptions, PullJob,
};
use crate::server::{router, Health, Server, Trigger};
use crate::systemd::ServiceManager;

use super::dispatch::{from_host, Overrides};

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Host config (TOML) with [repository], [server] and optionally [forge] [default: where
    /// `register` writes it: /etc/codex-runner/runner.toml as root, else
    /// ~/.config/codex-runner/runner.toml].
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Run the daemon until SIGTERM or Ctrl-C.
pub async fn run(a: RunArgs) -> i32 {
    match daemon(a, true).await {
        Ok(()) => exit::OK,
        Err(e) => {
            super::report_error(&e);
            exit::USAGE
        }
    }
}

/// The daemon; `chatty`: print the address and each pass's summary on stdout (the demo tells
/// its own story instead).
pub async fn daemon(a: RunArgs, chatty: bool) -> anyhow::Result<()> {
    let path = super::paths::config_or_default(a.config);
    anyhow::ensure!(
        path.exists(),
        "no host config at {}: write one with `codex-runner register`, or name it with --config (CODEX_RUNNER_CONFIG)",
        path.display()
    );
    let host = HostConfig::load(&path)?;
    let repo = host
        .repository
        .clone()
        .context("the host config has no [repository] section")?;
    let server_cfg = host.server.clone();
    let mut opts = from_host(
        host,
        repo.url.clone(),
        repo.branch.clone(),
        Overrides::default(),
    )?;
    // A daemon has a next pass: the claims a pass recorded ride on its first push.
    opts.keep_recorded_claims = true;
    super::dispatch::engine_has_runtimes(&opts).await?;
    let linger = server_cfg.poll_interval.min(CLAIM_LINGER);
    let secret = webhook_secret(&server_cfg)?;
    let fingerprint = secret.as_deref().map(crate::server::ops::fingerprint);
    let trigger = Arc::new(Trigger::default());
    let health = Arc::new(Health::default());
    if let Ok(mut b) = health.branch.lock() {
        *b = repo.branch.clone().unwrap_or_else(|| "main".into());
    }
    let mut server = Server::new(secret, opts.runner.clone(), trigger.clone(), health.clone());
    if opts.forge.is_some() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        server.pulls = Some(tx);
        tokio::spawn(validate_pulls(opts.clone(), rx));
    }
    let app = router(Arc::new(server), server_cfg.webhook_healthz);
    let bound = serve(&server_cfg.listen, app, "the webhook").await?;
    if chatty {
        println!(
            "codex-runner {} listening on http://{bound}",
            env!("CARGO_PKG_VERSION"),
        );
    }
    if let Some(addr) = &server_cfg.metrics_listen {
        let ops = crate::server::ops::router(Arc::new(crate::server::ops::Operator {
            runner: opts.runner.clone(),
            health: health.clone(),
            trigger: trigger.clone(),
            metrics: opts.metrics.clone(),
            executor: opts.executor.clone(),
            remote_fresh: server_cfg.poll_interval * 3 + Duration::from_secs(60),
            secret_fingerprint: fingerprint,
        }));
        let bound = serve(addr, ops, "metrics ([server] metrics_listen)").await?;
        if chatty {
            println!("codex-runner metrics, health and status on http://{bound}");
        }
        // Where `codex-runner status` finds this daemon, whatever port it was given.
        let found = serde_json::json!({"pid": std::process::id(), "operator": bound.to_string()});
        let at = opts.state_dir.join(DAEMON_FILE);
        if let Err(e) = std::fs::create_dir_all(&opts.state_dir)
            .and_then(|()| std::fs::write(&at, found.to_string()))
        {
            tracing::warn!(path = %at.display(), error = %e, "failed to note where this daemon answers");
        }
    }
    tokio::spawn(poll(
        repo.url.clone(),
        opts.git_auth.clone(),
        health.clone(),
        trigger.clone(),
        server_cfg.poll_interval,
    ));

    opts.shutdown
        .on_signals(opts.drain_timeout)
        .context("failed to watch SIGTERM and SIGINT")?;
    let manager = ServiceManager::from_env();
    tell_the_service_manager(manager, &opts);
    let mut ready = false;
    trigger.ask();
    // Claims of recorded requests the last pass left on the remote.
    let mut kept: Vec<String> = Vec::new();
    loop {
        let quiet = async {
            if kept.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(linger).await;
        };
        tokio::select! {
            _ = trigger.wait() => {}
            _ = quiet => {
                release_claims(&opts, std::mem::take(&mut kept)).await;
                continue;
            }
            _ = opts.shutdown.reached(Stage::Drain) => break,
        }
        let span = tracing::info_span!("pass", runner = %opts.runner);
        manager.status("a pass is running");
        let result = dispatch_once(&opts).instrument(span).await;
        let said = after_pass(result, &health, &trigger, &mut kept, chatty);
        if ready {
            manager.status(&said);
        } else {
            // Listeners bound, the branch looked at: started.
            manager.ready(&said);
            ready = true;
        }
        if opts.shutdown.stage() >= Stage::Drain {
            break;
        }
    }
    release_claims(&opts, kept).await;
    let _ = std::fs::remove_file(opts.state_dir.join(DAEMON_FILE));
    tracing::info!("stopped");
    Ok(())
}

/// The webhook secret from its file; none (with a warning) when no file is configured.
fn webhook_secret(server: &crate::config::ServerConfig) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(p) = &server.webhook_secret_file else {
        tracing::warn!(
            "no server.webhook_secret_file: /webhook refuses every delivery; polling only"
        );
        return Ok(None);
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("failed to read the webhook secret {}", p.display()))?;
    anyhow::ensure!(
        !text.trim().is_empty(),
        "the webhook secret file {} is empty",
        p.display()
    );
    Ok(Some(text.trim().as_bytes().to_vec()))
}

/// Bind `addr` and serve `app` there in the background; the address bound.
async fn serve(
    addr: &str,
    app: axum::Router,
    what: &'static str,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen for {what} on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the server for {what} stopped");
        }
    });
    Ok(bound)
}

/// What a pass's end changes in the daemon: its health, the claims left for the next pass,
/// a look again later at other runners' claims, the summary on stdout when `chatty`. The
/// line the service manager shows.
fn after_pass(
    result: Result<crate::engine::PassReport, crate::engine::DispatchError>,
    health: &Health,
    trigger: &Arc<Trigger>,
    kept: &mut Vec<String>,
    chatty: bool,
) -> String {
    let at = crate::record::now();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            tracing::error!(error = %e, "pass failed");
            health.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = health.last_error.lock() {
                *last = Some(e.to_string());
            }
            // Counted once its outcome is in place: readiness reads both.
            health.passes.fetch_add(1, Ordering::Relaxed);
            return format!("waiting; the last pass ({at}) failed: see the log");
        }
    };
    // Other runners' claims: look again once they may have gone stale.
    if let Some(after) = report.look_again {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            trigger.ask();
        });
    }
    if let Ok(mut b) = health.branch.lock() {
        b.clone_from(&report.branch);
    }
    if let Ok(mut own) = health.own_tip.lock() {
        *own = own_tip(&report);
    }
    // The pass swept and dropped the earlier ones.
    kept.clone_from(&report.kept_claims);
    if let Ok(mut e) = health.last_error.lock() {
        *e = None;
    }
    health.heard_remote();
    health.passes.fetch_add(1, Ordering::Relaxed);
    if chatty && !report.items.is_empty() {
        // stdout may be gone (a closed pipe): the summary is not worth dying for.
        use std::io::Write;
        let _ = write!(std::io::stdout(), "{}", super::dispatch::summary(&report));
    }
    format!(
        "waiting; the last pass ({at}) recorded {} request(s)",
        report.items.len()
    )
}

/// Feed the unit's watchdog while the runtime answers, and once a signal asks the daemon to
/// stop, say so and keep extending the stop timeout while running handlers finish.
fn tell_the_service_manager(manager: ServiceManager, opts: &DispatchOptions) {
    if let Some(every) = manager.watchdog_every() {
        tokio::spawn(async move {
            loop {
                manager.alive();
                tokio::time::sleep(every).await;
            }
        });
    }
    let shutdown = opts.shutdown.clone();
    let metrics = opts.metrics.clone();
    tokio::spawn(async move {
        shutdown.reached(Stage::Drain).await;
        let draining = || {
            format!(
                "stopping: {} request(s) running, none starting",
                metrics.running_now()
            )
        };
        manager.stopping(&draining());
        loop {
            tokio::time::sleep(ServiceManager::renew_every()).await;
            manager.status(&draining());
            manager.still_draining();
        }
    });
}

/// In the state directory: where the running daemon's operator listener answers.
pub(crate) const DAEMON_FILE: &str = "daemon.json";

/// How long a daemon leaves the claims of recorded requests on the remote for a next pass to
/// carry their deletion, before it drops them in a push of their own (at most the poll
/// interval).
const CLAIM_LINGER: Duration = Duration::from_secs(30);

/// Validate pull requests one at a time and publish `codex-runner/validate` on their heads.
async fn validate_pulls(
    opts: DispatchOptions,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PullJob>,
) {
    let Some(forge) = opts.forge.clone() else {
        return;
    };
    while let Some(job) = rx.recv().await {
        let span = tracing::info_span!("pull", number = job.number);
        let verdict = match validate_pull(&opts, &job).instrument(span).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(pull = job.number, error = %e, "validation failed");
                continue;
            }
        };
        let update = validation_update(&job, &verdict);
        match forge.publish(&update, None).await {
            Ok(_) => tracing::info!(
                pull = job.number,
                problems = verdict.violations.len(),
                "pull request validated"
            ),
            Err(e) => {
                tracing::warn!(pull = job.number, error = %e, "could not publish the validation")
            }
        }
    }
}

/// Ask for a pass whenever the remote's branch moved, checked every `every`.
async fn poll(
    url: String,
    auth: Option<crate::forge::GitHub>,
    health: Arc<Health>,
    trigger: Arc<Trigger>,
    every: Duration,
) {
    let mut last = None;
    loop {
        tokio::time::sleep(every).await;
        let branch = health.branch.lock().map(|b| b.clone()).unwrap_or_default();
        let t = match crate::engine::git_token(auth.as_ref()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "polling the remote failed");
                continue;
            }
        };
        let u = url.clone();
        let looked =
            tokio::task::spawn_blocking(move || crate::git::remote_tip(&u, &branch, t.as_deref()))
                .await;
        if let Ok(Ok(_)) = &looked {
            health.heard_remote();
        }
        match looked {
            Ok(Ok(tip)) if tip != last && is_own(&health, tip) => {
                // The runner's own results, on top of what its pass planned from: a pass
                // now would find nothing new (webhooks skip these pushes too).
                tracing::debug!("the branch moved by the runner's own push: no pass");
                last = tip;
            }
            Ok(Ok(tip)) if tip != last => {
                // The first look counts too: a push between start-up and now may have had
                // no webhook. An extra pass with nothing new is cheap.
                tracing::info!("the branch moved: pass queued by polling");
                trigger.ask();
                last = tip;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "polling the remote failed"),
            Err(e) => tracing::warn!(error = %e, "polling task failed"),
        }
    }
}

/// The tip `report`'s pass left the branch at, when it is the runner's own: the pass
/// published, and each commit it pushed sits on the one before, the first on the tip the pass
/// planned from (a foreign commit in between may bring requests no pass has seen).
fn own_tip(report: &crate::engine::PassReport) -> Option<CommitId> {
    let mut below = report.tip?;
    for p in &report.published {
        if p.parent != below {
            return None;
        }
        below = p.commit;
    }
    (!report.published.is_empty()).then_some(below)
}

/// Whether `tip` is where the runner's own last pass left the branch.
fn is_own(health: &Health, tip: Option<CommitId>) -> bool {
    let own = health.own_tip.lock().ok().and_then(|o| *o);
    tip.is_some() && tip == own
}
