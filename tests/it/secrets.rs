//! Handler secrets end to end: from the host config to the one handler that names them, and
//! masked in everything the runner writes (a real Docker engine, a real git remote, the local
//! forge for check runs).

use crate::common::{docker, log_path, status_path, Repo};

use std::process::Command;

use base64::Engine as _;
use forge_sim::Token;
use sha2::Digest;

const FORGE_TOKEN: &str = "ghp_runner";
const TOKEN: &str = "tok-3f9a1c7e5b2d-value";
const FROM_ENV: &str = "env-secret-8c1d2e";
const UNUSED: &str = "never-given-out-77aa";
const KEY: &str = "-----BEGIN TEST KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nbm90IGEgcmVhbCBrZXkgYXQgYWxsLCBqdXN0IGxvbmcgZW5vdWdoIHRvIHdyYXA\n-----END TEST KEY-----\n";

fn sha256(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Every form of a secret that must never appear in what the runner writes.
fn forbidden() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![
        TOKEN.to_string(),
        FROM_ENV.to_string(),
        UNUSED.to_string(),
        b64.encode(TOKEN),
        b64.encode(TOKEN).trim_end_matches('=').to_string(),
        b64.encode(format!("xx{TOKEN}"))[4..28].to_string(),
    ];
    out.extend(KEY.lines().map(str::to_string));
    out.extend(
        b64.encode(KEY)
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned()),
    );
    out
}

fn assert_clean(what: &str, text: &str) {
    for f in forbidden() {
        assert!(
            !text.contains(&f),
            "{what} shows a secret form `{f}`:\n{text}"
        );
    }
}

const LEAK: &str = r#"#!/bin/sh
set -u
echo "token: $TOKEN"
printf %s "$TOKEN" | base64
printf 'xx%s' "$TOKEN" | base64
echo "sha token $(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"
echo "from env: $FROM_ENV"
echo "sha env $(printf %s "$FROM_ENV" | sha256sum | cut -d' ' -f1)"
echo "key file:"
cat "$CODEX_SECRETS/KEY"
base64 "$CODEX_SECRETS/KEY"
echo "sha key $(sha256sum < "$CODEX_SECRETS/KEY" | cut -d' ' -f1)"
echo "mode $(stat -c '%a %u' "$CODEX_SECRETS/KEY")"
# One line longer than the 64 KiB piece the runner cuts long lines into, the token across
# the cut.
head -c 65530 /dev/zero | tr '\0' a; printf '%s\n' "$TOKEN"
echo "failing with $TOKEN" >&2
exit 3
"#;

const PEEK: &str = r#"#!/bin/sh
echo "TOKEN is ${TOKEN:-unset}, UNUSED is ${UNUSED:-unset}, CODEX_SECRETS is ${CODEX_SECRETS:-unset}"
ls /run/secrets 2>/dev/null || echo "no /run/secrets"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_their_handler_and_are_masked_everywhere() {
    docker();
    let (sim, mut repo): (_, Repo) =
        crate::common::on_forge("t-secrets", vec![Token::full(FORGE_TOKEN)]).await;
    let tmp = repo.tmp.path().to_path_buf();
    let key_file = tmp.join("key.pem");
    std::fs::write(&key_file, KEY).unwrap();
    let secrets_dir = format!("/dev/shm/codex-test-secrets-{}", std::process::id());
    let config = tmp.join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nsecrets_dir = \"{secrets_dir}\"\n[limits]\ngrace = \"1s\"\n\
             [secrets]\nTOKEN = {{ value = \"{TOKEN}\" }}\nKEY = {{ file = \"{}\" }}\n\
             FROM_ENV = {{ env = \"CODEX_TEST_FROM_ENV\" }}\nUNUSED = {{ value = \"{UNUSED}\" }}\n",
            key_file.display()
        ),
    )
    .unwrap();
    repo.add_handler(
        "leak",
        LEAK,
        "    image: codex-runner/busybox:1\n    timeout: 1m\n    secrets:\n      TOKEN: env\n      KEY: file\n      FROM_ENV: env\n",
    );
    repo.add_handler("peek", PEEK, "    image: codex-runner/busybox:1\n");
    repo.add_handler(
        "wants",
        PEEK,
        "    image: codex-runner/busybox:1\n    secrets:\n      MISSING: env\n",
    );
    let merge = repo.merge_pr(&[
        ("requests/leak.yaml", b"kind: leak\n"),
        ("requests/peek.yaml", b"kind: peek\n"),
        ("requests/wants.yaml", b"kind: wants\n"),
        // An agent pasted the token into a request: the echo handler prints it back.
        (
            "requests/pasted.yaml",
            format!("kind: echo\nparams: {{message: \"{TOKEN}\"}}\n").as_bytes(),
        ),
        // And into a directory name the runner warns about.
        (&format!("requests/{TOKEN}/nested.yaml"), b"kind: echo\n"),
    ]);
    let token_file = tmp.join("forge-token");
    std::fs::write(&token_file, FORGE_TOKEN).unwrap();
    let url = sim.git_url("acme", "ops", Some(FORGE_TOKEN));
    let out = tokio::task::block_in_place(|| {
        repo.dispatch_command(&url, &[])
            .args(["--config", config.to_str().unwrap()])
            .args(["--forge-api", &sim.url(), "--forge-repo", "acme/ops"])
            .args(["--forge-token-file", token_file.to_str().unwrap()])
            .env("CODEX_TEST_FROM_ENV", FROM_ENV)
            .env("CODEX_LOG", "debug")
            .output()
            .unwrap()
    });
    let pass = crate::common::Pass::from(out).ok();
    let states = pass.states();
    assert_eq!(states["leak"], "failed", "{:?}", pass.stderr);
    assert_eq!(states["peek"], "succeeded");
    assert_eq!(states["pasted"], "succeeded");
    assert_eq!(repo.status("wants")["state"], "rejected");
    let wants = repo.status("wants")["reason"].as_str().unwrap().to_string();
    assert!(
        wants.contains("handler `wants` needs secret `MISSING`")
            && wants.contains("[secrets] MISSING"),
        "{wants}"
    );
    assert!(
        !repo.log("wants").iter().any(|e| e["event"] == "started"),
        "nothing ran"
    );

    // The handler got each secret, as asked: the hashes it printed are the values'.
    let leak = repo.output("leak");
    let text = leak.join("\n");
    for (what, value) in [("token", TOKEN), ("env", FROM_ENV), ("key", KEY)] {
        assert!(
            text.contains(&format!("sha {what} {}", sha256(value))),
            "{what} reached the handler intact:\n{text}"
        );
    }
    assert!(
        text.contains("mode 400 65534"),
        "the key file is the handler user's alone: {text}"
    );
    assert!(leak.iter().any(|l| l == "token: ***"), "{text}");
    assert!(leak.iter().any(|l| l == "failing with ***"), "{text}");
    let long = leak.iter().filter(|l| l.starts_with("aaaa")).count();
    assert!(long >= 1, "the long line is in the log");
    // Another handler gets none of them.
    let peek = repo.output("peek").join("\n");
    assert!(
        peek.contains("TOKEN is unset, UNUSED is unset, CODEX_SECRETS is unset")
            && peek.contains("no /run/secrets"),
        "{peek}"
    );

    // Nothing the runner wrote shows a secret in any form.
    for id in ["leak", "peek", "wants", "pasted"] {
        let log = repo.main_file(&log_path(id)).unwrap();
        assert_clean(&log_path(id), &log);
        let status = repo.main_file(&status_path(id)).unwrap();
        assert_clean(&status_path(id), &status);
    }
    assert!(
        repo.output("pasted").iter().any(|l| l.contains("***")),
        "the pasted token is masked in its output"
    );
    let history = Command::new("git")
        .args(["--git-dir", repo.origin.to_str().unwrap()])
        .args(["log", "--format=%B", "main"])
        .output()
        .unwrap();
    assert_clean(
        "the commit messages",
        &String::from_utf8_lossy(&history.stdout),
    );
    assert_clean("the runner's report", &pass.report.to_string());
    assert_clean("the runner's tracing", &pass.stderr);
    assert!(
        pass.stderr.contains("requests/***"),
        "the file name is masked, not dropped: {}",
        pass.stderr
    );
    let runs = crate::common::forge_get(
        &sim.url(),
        FORGE_TOKEN,
        &format!("/repos/acme/ops/commits/{merge}/check-runs"),
    );
    let runs_text = runs.to_string();
    assert!(
        runs["check_runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "codex-runner/leak"
                && r["output"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("***")))),
        "the leak check run shows masked output: {runs:#}"
    );
    assert_clean("the check runs", &runs_text);

    // The staged files are gone with their container.
    let left: Vec<_> = std::fs::read_dir(&secrets_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staged secrets left behind: {left:?}");
    repo.assert_no_containers();
    let _ = std::fs::remove_dir_all(&secrets_dir);
}

#[test]
fn a_secret_the_host_cannot_resolve_stops_the_runner_at_start() {
    let repo = Repo::new("t-secrets-start");
    let config = repo.tmp.path().join("runner.toml");
    std::fs::write(
        &config,
        "[secrets]\nTOKEN = { env = \"CODEX_TEST_SURELY_UNSET\" }\n",
    )
    .unwrap();
    let out = repo
        .dispatch_command(repo.origin.to_str().unwrap(), &[])
        .args(["--config", config.to_str().unwrap()])
        .env_remove("CODEX_TEST_SURELY_UNSET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("secret `TOKEN`") && stderr.contains("CODEX_TEST_SURELY_UNSET` is not set"),
        "{stderr}"
    );
}
