//! The demo on a local GitHub-compatible forge: the whole story a team sees.
//!
//! forge-sim serves a repository made from the template; the runner registers (webhook,
//! config) and runs as a daemon in this process; an agent opens a pull request with requests
//! (validated green) and one with a typo (red, annotated); the good one is merged, the webhook
//! triggers a pass, requests run in Docker, check runs go queued → in_progress → completed,
//! and the logs land on main.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use forge_sim::{Client, ForgeSim, Token};
use serde_json::Value;

use codex_runner::git::seed::{SeedFile, SeedRepo};

const TOKEN: &str = "ghp_demo_runner_token";

struct Clock(Instant);

impl Clock {
    fn step(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>6.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_run(gh: &Client, sha: &str, name: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = gh.check_runs(sha).await?;
        if let Some(r) = runs
            .into_iter()
            .find(|r| r["name"] == name && r["status"] == "completed")
        {
            return Ok(r);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no completed {name} on {sha} after 120s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the forge demo under `root`; the process exit code.
pub async fn run(root: &Path) -> anyhow::Result<i32> {
    let clock = Clock(Instant::now());
    let sim = ForgeSim::start(&root.join("forge"), 0, vec![Token::full(TOKEN)]).await?;
    sim.create_repo("acme", "ops")?;
    clock.step(format!(
        "local GitHub-compatible forge on {} with repository acme/ops",
        sim.url()
    ));

    let seed = SeedRepo::init_bare(&root.join("agent.git"))?;
    let template = crate::template::seed_files();
    let base = seed.commit(
        "refs/heads/main",
        &[],
        &template,
        "Start an operations repository from the codex-runner template",
    )?;
    let git_url = sim.git_url("acme", "ops", None);
    seed.push(&git_url, &["refs/heads/main"], Some(TOKEN))?;
    clock.step("main holds handlers/, containers/, codex.repo.yaml (pushed over git smart HTTP)");

    let token_file = root.join("token");
    std::fs::write(&token_file, TOKEN)?;
    let port = free_port()?;
    let config = root.join("etc/runner.toml");
    let register = codex_runner::cli::register::RegisterArgs {
        url: format!("{}/acme/ops", sim.url()),
        api_url: Some(sim.url()),
        git_url: Some(git_url.clone()),
        token_file: Some(token_file),
        app_id: None,
        app_key: None,
        installation_id: None,
        report: "auto".into(),
        name: "demo-runner".into(),
        labels: vec!["demo".into()],
        webhook_url: Some(format!("http://127.0.0.1:{port}/webhook")),
        listen: format!("127.0.0.1:{port}"),
        // Beside whatever else serves metrics on this host.
        metrics_listen: "127.0.0.1:0".into(),
        config: Some(config.clone()),
        state_dir: Some(root.join("state")),
    };
    let registered = codex_runner::cli::register::do_register(register)
        .await
        .context("failed to register the demo runner")?;
    clock.step(format!(
        "codex-runner register: permissions checked; {}",
        registered.hook.as_deref().unwrap_or("no webhook")
    ));
    clock.step(format!("  {}", registered.summary));
    tokio::spawn(codex_runner::cli::run::daemon(
        codex_runner::cli::run::RunArgs {
            config: Some(config),
        },
        false,
    ));
    clock.step(format!(
        "codex-runner run: daemon listening on 127.0.0.1:{port}"
    ));

    // The agent's and the reviewer's side: plain API calls, as a person or a bot makes them.
    let gh = Client::new(&sim.url(), "acme", "ops", TOKEN);
    let good: &[(&str, &str)] = &[
        ("requests/hello.yaml", "kind: echo\nparams:\n  message: hello from a merged pull request\n"),
        ("requests/deploy-web.yaml", "kind: deploy\nparams:\n  service: web\n  version: v1.4.2\n  environment: staging\n  steps: 2\n"),
        ("requests/backup-orders.yaml", "kind: backup\nparams:\n  database: orders\n  retention_days: 30\n"),
    ];
    let files = SeedFile::texts(good);
    let head = seed.commit(
        "refs/heads/agent/rollout",
        &[base],
        &files,
        "Roll out web v1.4.2 and back up orders",
    )?;
    seed.push(&git_url, &["refs/heads/agent/rollout"], Some(TOKEN))?;
    let pr = gh
        .create_pull("Roll out web v1.4.2", "agent/rollout", "main")
        .await?;
    clock.step(format!(
        "an agent opened PR #{pr} adding {} requests",
        good.len()
    ));
    let check = wait_for_run(&gh, &head.to_string(), "codex-runner/validate").await?;
    clock.step(format!(
        "  codex-runner/validate on PR #{pr}: {} — {}",
        check["conclusion"].as_str().unwrap_or("?"),
        check["output"]["title"].as_str().unwrap_or("")
    ));

    let typo = "kind: deplyo\nparams:\n  service: api\n";
    let bad_head = seed.commit(
        "refs/heads/agent/typo",
        &[base],
        &[SeedFile {
            path: "requests/deploy-api.yaml",
            bytes: typo.as_bytes(),
            executable: false,
        }],
        "Deploy api",
    )?;
    seed.push(&git_url, &["refs/heads/agent/typo"], Some(TOKEN))?;
    let bad_pr = gh.create_pull("Deploy api", "agent/typo", "main").await?;
    clock.step(format!("another PR #{bad_pr} has a typo in its request"));
    let check = wait_for_run(&gh, &bad_head.to_string(), "codex-runner/validate").await?;
    clock.step(format!(
        "  codex-runner/validate on PR #{bad_pr}: {}",
        check["conclusion"].as_str().unwrap_or("?")
    ));
    for a in gh
        .annotations(check["id"].as_u64().unwrap_or_default())
        .await?
    {
        clock.step(format!(
            "    annotation {}:{}: {}",
            a["path"].as_str().unwrap_or(""),
            a["start_line"],
            a["message"].as_str().unwrap_or("").replace('\n', " — ")
        ));
    }

    let merge = gh.merge_pull(pr).await?;
    clock.step(format!(
        "PR #{pr} merged as {} → push webhook → the runner's pass",
        &merge[..10.min(merge.len())]
    ));
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for r in gh.check_runs(&merge).await? {
            let name = r["name"].as_str().unwrap_or("").to_string();
            let state = match r["conclusion"].as_str() {
                Some(c) => format!("completed: {c}"),
                None => r["status"].as_str().unwrap_or("").to_string(),
            };
            if seen.get(&name) != Some(&state) {
                clock.step(format!("  {name:<30} {state}"));
                seen.insert(name, state);
            }
        }
        let done = seen.len() == good.len() && seen.values().all(|s| s.starts_with("completed"));
        if done {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "check runs did not complete in 180s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seed.fetch_main(&git_url, Some(TOKEN))?;
    println!("\nmain now reads, newest first:");
    for line in seed.history(4)? {
        println!("  {line}");
    }
    let log_path = crate::demo::template_ledger().log("deploy-web");
    println!("\n{log_path} on main (output lines):");
    if let Some(log) = seed.read_main(&log_path)? {
        for line in String::from_utf8_lossy(&log)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if line["event"] == "output" {
                println!("  {}", line["line"].as_str().unwrap_or(""));
            }
        }
    }
    let ok = seen.values().filter(|s| *s == "completed: success").count();
    println!(
        "\n{ok} of {} requests succeeded; PR #{bad_pr} stays red and nothing from it ran",
        good.len()
    );
    sim.stop();
    Ok(if ok == good.len() { 0 } else { 1 })
}
