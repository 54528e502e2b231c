//! `codex-runner register` / `unregister` against the local forge.

use std::os::unix::fs::PermissionsExt;

use crate::common::{health, log_path, Repo};
use forge_sim::{ForgeSim, Token};
use serde_json::Value;

const TOKEN: &str = "ghp_admin";
const READER: &str = "ghp_reader";

fn hooks(sim: &ForgeSim) -> Vec<Value> {
    crate::common::forge_get(&sim.url(), TOKEN, "/repos/acme/ops/hooks")
        .as_array()
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_twice_leaves_one_hook_and_unregister_removes_it() {
    let (sim, repo) = crate::common::on_forge(
        "t-register",
        vec![Token::full(TOKEN), Token::read_only(READER)],
    )
    .await;
    let dir = repo.tmp.path();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("reader"), READER).unwrap();
    let config = dir.join("etc/runner.toml");
    let web = format!("{}/acme/ops", sim.url());
    let register = |token: &str| {
        let token_file = dir.join(token);
        let out = tokio::task::block_in_place(|| {
            crate::common::codex(&[
                "register",
                "--url",
                &web,
                "--api-url",
                &sim.url(),
                "--git-url",
                &sim.git_url("acme", "ops", None),
                "--token-file",
                token_file.to_str().unwrap(),
                "--name",
                "web-1",
                "--labels",
                "linux,prod",
                "--webhook-url",
                "http://127.0.0.1:9/webhook",
                "--config",
                config.to_str().unwrap(),
            ])
        });
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = register("reader");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("push to main") && stderr.contains("manage webhooks"),
        "each missing permission named: {stderr}"
    );
    assert!(
        !config.exists() && hooks(&sim).is_empty(),
        "nothing written or created"
    );

    let (code, stdout, stderr) = register("token");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "next: sudo codex-runner install --config {}",
            config.display()
        )),
        "{stdout}"
    );
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        !text.contains(TOKEN),
        "the config names the token file, never the token: {text}"
    );
    assert!(text.contains("labels = [\"linux\", \"prod\"]"), "{text}");
    for key in [
        "work_dir = ",
        "listen = ",
        "[limits]",
        "max_memory = \"4GiB\"",
        "grace = \"10s\"",
    ] {
        assert!(text.contains(key), "the config shows {key}: {text}");
    }
    let first_secret = std::fs::read_to_string(dir.join("etc/webhook-secret")).unwrap();
    let h = hooks(&sim);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["config"]["url"], "http://127.0.0.1:9/webhook");
    assert_eq!(h[0]["events"], serde_json::json!(["push", "pull_request"]));

    let (code, _, stderr) = register("token");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hooks(&sim).len(), 1, "registering twice leaves one hook");
    assert_ne!(
        std::fs::read_to_string(dir.join("etc/webhook-secret")).unwrap(),
        first_secret,
        "a fresh secret each time"
    );

    let out = tokio::task::block_in_place(|| {
        crate::common::codex(&["unregister", "--config", config.to_str().unwrap()])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hooks(&sim).is_empty());
    assert!(!config.exists() && !dir.join("etc/webhook-secret").exists());
}

/// A forge that behaves like github.com about check runs (an App's installation token is the
/// only way to write them), with acme/ops holding the template.
async fn github_like(runner: &str) -> (ForgeSim, Repo) {
    let (sim, repo) =
        crate::common::on_forge(runner, vec![Token::full(TOKEN), Token::read_only(READER)]).await;
    sim.checks_need_app(true);
    (sim, repo)
}

/// `codex-runner register` for acme/ops with `credentials` and `extra`; (exit code, stdout, stderr).
fn register_with(sim: &ForgeSim, config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let web = format!("{}/acme/ops", sim.url());
    let git = sim.git_url("acme", "ops", None);
    let mut all = vec![
        "register",
        "--url",
        &web,
        "--api-url",
        &web[..web.len() - "/acme/ops".len()],
        "--git-url",
        &git,
        "--name",
        "app-1",
        "--config",
        config.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = tokio::task::block_in_place(|| crate::common::codex(&all));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_registers_runs_and_refreshes_its_installation_token() {
    crate::common::docker();
    let (sim, mut repo) = github_like("t-app").await;
    let dir = repo.tmp.path().to_path_buf();
    let (key, public) = forge_sim::app_keypair(&dir.join("app")).unwrap();
    // Installation tokens live 3 s here (an hour on GitHub): a daemon that did not refresh
    // them would fail its second pass.
    let app = |id: u64, admin: bool| forge_sim::App {
        id,
        public_key_pem: public.clone(),
        installation_id: 7,
        grants: Token {
            admin,
            ..Token::full("")
        },
        token_ttl: std::time::Duration::from_secs(3),
    };
    sim.add_app(app(41, false));
    sim.add_app(app(42, true));
    let config = dir.join("etc/runner.toml");
    let port = free_port();
    let webhook = format!("http://127.0.0.1:{port}/webhook");
    let listen = format!("127.0.0.1:{port}");
    let as_app = |id: &'static str| {
        vec![
            "--app-id",
            id,
            "--app-key",
            key.to_str().unwrap(),
            "--installation-id",
            "7",
        ]
    };

    // An app without repository_hooks: write cannot create the webhook; the message says so.
    let mut args = as_app("41");
    args.extend(["--webhook-url", &webhook, "--listen", &listen]);
    let (code, _, stderr) = register_with(&sim, &config, &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("repository_hooks: write"), "{stderr}");
    assert!(!config.exists());
    // A key that is not the app's: refused, named.
    std::fs::write(dir.join("bad.pem"), "not a key").unwrap();
    let (code, _, stderr) = register_with(
        &sim,
        &config,
        &[
            "--app-id",
            "42",
            "--app-key",
            dir.join("bad.pem").to_str().unwrap(),
            "--installation-id",
            "7",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("GitHub App key"), "{stderr}");

    let mut args = as_app("42");
    args.extend([
        "--webhook-url",
        &webhook,
        "--listen",
        &listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        repo.state.to_str().unwrap(),
    ]);
    let (code, stdout, stderr) = register_with(&sim, &config, &args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("results as check-runs"), "{stdout}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("app_id = 42")
            && text.contains("installation_id = 7")
            && !text.contains("token_file"),
        "{text}"
    );
    assert!(
        !text.contains("PRIVATE KEY"),
        "the config names the key file only: {text}"
    );

    let daemon = crate::common::spawn_daemon(&config);
    crate::common::wait_until("the start-up pass", async || {
        crate::common::health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    let mut merges = Vec::new();
    for (i, id) in ["first", "second"].into_iter().enumerate() {
        if i > 0 {
            // Every token minted so far has expired.
            tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
        }
        let request = format!("kind: echo\nparams: {{message: {id}}}\n");
        let merge = tokio::task::block_in_place(|| {
            repo.merge_pr(&[(&format!("requests/{id}.yaml"), request.as_bytes())])
        });
        crate::common::wait_until("the completed check run", async || {
            let list = crate::common::forge_get(
                &sim.url(),
                TOKEN,
                &format!("/repos/acme/ops/commits/{merge}/check-runs"),
            );
            list["check_runs"][0]["conclusion"] == "success"
        })
        .await;
        assert_eq!(repo.status(id)["state"], "succeeded");
        merges.push(merge);
    }
    let runs = crate::common::forge_get(
        &sim.url(),
        TOKEN,
        &format!("/repos/acme/ops/commits/{}/check-runs", merges[1]),
    );
    assert_eq!(runs["total_count"], 1, "one run per request: {runs}");
    assert!(
        sim.minted_tokens() >= 3,
        "tokens were minted again after expiring: {}",
        sim.minted_tokens()
    );
    let h = health(&daemon).await;
    assert_eq!(h["failed_passes"], 0, "{h}");

    // `verify` proves the whole chain without running a request.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let verify = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"))
            .args([
                "verify",
                "--config",
                config.to_str().unwrap(),
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        let said: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), said)
    };
    let check = |said: &serde_json::Value, name: &str| -> serde_json::Value {
        said["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {said}"))
            .clone()
    };
    let (code, said) = tokio::task::block_in_place(verify);
    assert_eq!(code, Some(0), "{said:#}");
    for name in [
        "config",
        "credentials",
        "secrets",
        "remote",
        "forge",
        "webhook",
        "docker",
        "listeners",
    ] {
        assert_eq!(check(&said, name)["ok"], true, "{name}: {said:#}");
    }
    let hook = check(&said, "webhook")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        hook.contains("the daemon accepted a ping signed with its secret"),
        "{hook}"
    );
    let pushed = check(&said, "remote")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(pushed.contains("a push was taken (and undone)"), "{pushed}");
    let probes = crate::common::sh(
        &repo.origin,
        "git",
        &["for-each-ref", "--format=%(refname)", "refs/codex/verify/"],
    );
    assert_eq!(probes.trim(), "", "the push probe left its ref");

    // The secret file rotated under a daemon that still checks with the old one.
    let secret_file = config.with_file_name("webhook-secret");
    let kept = std::fs::read(&secret_file).unwrap();
    std::fs::write(&secret_file, "rotated-but-not-restarted").unwrap();
    let (code, said) = tokio::task::block_in_place(verify);
    assert_eq!(code, Some(1), "{said:#}");
    let hook = check(&said, "webhook")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(hook.contains("another secret than"), "{hook}");
    std::fs::write(&secret_file, kept).unwrap();

    // The hook's secret changed on the forge: the daemon refuses the ping, and verify says so.
    let hooks = crate::common::forge_get(&sim.url(), TOKEN, "/repos/acme/ops/hooks");
    let id = hooks[0]["id"].as_u64().unwrap();
    let patched = reqwest::Client::new()
        .patch(format!("{}/repos/acme/ops/hooks/{id}", sim.url()))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"config": {"url": webhook, "content_type": "json", "secret": "not-the-files"}}))
        .send()
        .await
        .unwrap();
    assert!(patched.status().is_success(), "{}", patched.status());
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, said) = tokio::task::block_in_place(verify);
    assert_eq!(code, Some(1), "{said:#}");
    let hook = check(&said, "webhook");
    assert_eq!(hook["ok"], false, "{said:#}");
    assert!(
        hook["detail"]
            .as_str()
            .unwrap()
            .contains("the daemon refused its ping"),
        "{hook}"
    );
    let cfg = check(&said, "config");
    assert!(
        cfg["detail"]
            .as_str()
            .unwrap()
            .contains("others may read it"),
        "{cfg}"
    );
    drop(daemon);
    repo.assert_no_containers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_cannot_write_check_runs_reports_commit_statuses() {
    crate::common::docker();
    let (sim, mut repo) = github_like("t-statuses").await;
    let dir = repo.tmp.path().to_path_buf();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let config = dir.join("etc/runner.toml");
    let token_file = dir.join("token");
    let token = ["--token-file", token_file.to_str().unwrap()];

    let mut args = token.to_vec();
    args.extend(["--report", "check-runs"]);
    let (code, _, stderr) = register_with(&sim, &config, &args);
    assert_eq!(code, 1, "check runs were demanded and cannot be written");
    assert!(
        stderr.contains("write checks") && stderr.contains("GitHub App"),
        "{stderr}"
    );

    let mut args = token.to_vec();
    args.extend(["--state-dir", repo.state.to_str().unwrap()]);
    let (code, stdout, stderr) = register_with(&sim, &config, &args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("results as statuses"), "{stdout}");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("report = \"statuses\""));

    let merge = tokio::task::block_in_place(|| {
        repo.merge_pr(&[
            (
                "requests/hello.yaml",
                b"kind: echo\nparams: {message: hi}\n",
            ),
            (
                "requests/broken.yaml",
                b"kind: echo\nparams: {message: hi, volume: 11}\n",
            ),
        ])
    });
    let url = sim.git_url("acme", "ops", None);
    let pass = tokio::task::block_in_place(|| {
        repo.dispatch_url(&url, &["--config", config.to_str().unwrap()])
    })
    .ok();
    assert_eq!(
        pass.states().get("hello").map(String::as_str),
        Some("succeeded")
    );
    let statuses = sim.statuses("acme", "ops", &merge);
    let newest = |context: &str| {
        statuses
            .iter()
            .rev()
            .find(|s| s.context == context)
            .unwrap_or_else(|| panic!("no status {context}: {statuses:?}"))
            .clone()
    };
    let hello = newest("codex-runner/hello");
    assert_eq!(hello.state, "success");
    assert!(
        hello
            .target_url
            .as_deref()
            .unwrap()
            .ends_with(&format!("/{}", log_path("hello"))),
        "{hello:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.context == "codex-runner/hello" && s.state == "pending"),
        "pending first: {statuses:?}"
    );
    let broken = newest("codex-runner/broken");
    assert_eq!(
        broken.state, "error",
        "a rejected request needs someone: {broken:?}"
    );
    assert!(
        broken
            .description
            .as_deref()
            .unwrap()
            .contains("requests/broken.yaml:"),
        "the description points at the line: {broken:?}"
    );
    assert!(
        crate::common::forge_get(
            &sim.url(),
            TOKEN,
            &format!("/repos/acme/ops/commits/{merge}/check-runs")
        )["total_count"]
            == 0,
        "no check run was written"
    );
}
