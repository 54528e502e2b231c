//! `codex-runner register` / `unregister` against the local forge.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Repo;
use forge_sim::{ForgeSim, Token};
use serde_json::Value;

const TOKEN: &str = "ghp_admin";
const READER: &str = "ghp_reader";

fn hooks(sim: &ForgeSim) -> Vec<Value> {
    common::forge_get(&sim.url(), TOKEN, "/repos/acme/ops/hooks")
        .as_array()
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_twice_leaves_one_hook_and_unregister_removes_it() {
    let repo = Repo::new("t-register");
    let sim = ForgeSim::start(
        &repo.tmp.path().join("forge"),
        0,
        vec![Token::full(TOKEN), Token::read_only(READER)],
    )
    .await
    .unwrap();
    sim.create_repo("acme", "ops").unwrap();
    repo.git(&[
        "push",
        "-q",
        &sim.git_url("acme", "ops", Some(TOKEN)),
        "main",
    ]);
    let dir = repo.tmp.path();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("reader"), READER).unwrap();
    let config = dir.join("etc/runner.toml");
    let web = format!("{}/acme/ops", sim.url());
    let register = |token: &str| {
        let token_file = dir.join(token);
        let out = tokio::task::block_in_place(|| {
            common::codex(&[
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
        stdout.contains("next: codex-runner run --config") && stdout.contains("ExecStart="),
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
        common::codex(&["unregister", "--config", config.to_str().unwrap()])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hooks(&sim).is_empty());
    assert!(!config.exists() && !dir.join("etc/webhook-secret").exists());
}
