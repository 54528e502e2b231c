//! forge-sim against real git clients and a real webhook receiver, all on loopback.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use forge_sim::{sign, ForgeSim, Token};
use serde_json::{json, Value};

const TOKEN: &str = "ghp_full";
const READER: &str = "ghp_reader";
const SECRET: &str = "It's a Secret to Everybody";

async fn forge(tmp: &Path) -> ForgeSim {
    let tokens = vec![Token::full(TOKEN), Token::read_only(READER)];
    let sim = ForgeSim::start(&tmp.join("forge"), 0, tokens)
        .await
        .unwrap();
    sim.create_repo("acme", "ops").unwrap();
    sim
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args([
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "credential.helper=",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Commit `files` in a fresh clone of acme/ops and push main with `token`.
fn push(sim: &ForgeSim, tmp: &Path, token: &str, files: &[(&str, &str)]) -> std::process::Output {
    push_as(sim, tmp, token, "main", "main", files).0
}

/// Clone `from`, commit `files`, push to `to` with `token`; the push's output and the clone.
fn push_as(
    sim: &ForgeSim,
    tmp: &Path,
    token: &str,
    from: &str,
    to: &str,
    files: &[(&str, &str)],
) -> (std::process::Output, std::path::PathBuf) {
    let dir = tmp.join(format!("clone-{}", rand_suffix()));
    let url = sim.git_url("acme", "ops", Some(TOKEN));
    ok(git(tmp, &["clone", "-q", &url, dir.to_str().unwrap()]));
    // An empty repository has no branch to check out: the first push creates it.
    let checkout = git(&dir, &["checkout", "-q", from]);
    assert!(
        checkout.status.success() || !git(&dir, &["rev-parse", "HEAD"]).status.success(),
        "no branch {from}"
    );
    for (p, text) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    ok(git(&dir, &["add", "-A"]));
    ok(git(&dir, &["commit", "-q", "-m", &format!("change {to}")]));
    let out = git(
        &dir,
        &[
            "push",
            "-q",
            &sim.git_url("acme", "ops", Some(token)),
            &format!("HEAD:refs/heads/{to}"),
        ],
    );
    (out, dir)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// An HTTP server on loopback that records every POST.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push((headers, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

async fn wait_for(got: &Received, event: &str, n: usize) -> Vec<(HeaderMap, Vec<u8>)> {
    for _ in 0..100 {
        let hits: Vec<_> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _)| h["x-github-event"] == event)
            .cloned()
            .collect();
        if hits.len() >= n {
            return hits;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no {event} delivery arrived");
}

fn api(
    sim: &ForgeSim,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let req = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.url()))
        .header("accept", "application/vnd.github+json");
    match token {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_over_http_honours_token_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    ok(push(&sim, tmp.path(), TOKEN, &[("README.md", "hello\n")]));
    let head = ok(git(
        tmp.path(),
        &[
            "ls-remote",
            &sim.git_url("acme", "ops", Some(READER)),
            "refs/heads/main",
        ],
    ));
    assert_eq!(head.split_whitespace().nth(1), Some("refs/heads/main"));

    let denied = push(&sim, tmp.path(), READER, &[("x", "y")]);
    assert!(!denied.status.success(), "a read-only token must not push");
    let unknown = git(
        tmp.path(),
        &["ls-remote", &sim.git_url("acme", "ops", Some("ghp_wrong"))],
    );
    assert!(!unknown.status.success());
    let missing = git(
        tmp.path(),
        &["ls-remote", &sim.git_url("acme", "nope", Some(TOKEN))],
    );
    assert!(!missing.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_sends_a_signed_push_webhook() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    let (url, got) = receiver().await;
    let created = api(&sim, Some(TOKEN), reqwest::Method::POST, "/repos/acme/ops/hooks")
        .json(&json!({"name": "web", "config": {"url": url, "content_type": "json", "secret": SECRET}, "events": ["push", "pull_request"], "active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let hook: Value = created.json().await.unwrap();
    assert_eq!(
        hook["config"]["secret"], "********",
        "the secret is never shown"
    );
    let ping = wait_for(&got, "ping", 1).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&ping[0].1).unwrap()["hook_id"],
        hook["id"]
    );

    ok(push(
        &sim,
        tmp.path(),
        TOKEN,
        &[("requests/a.yaml", "kind: echo\n")],
    ));
    let pushes = wait_for(&got, "push", 1).await;
    let (headers, body) = &pushes[0];
    assert_eq!(
        headers["x-hub-signature-256"].to_str().unwrap(),
        sign(SECRET, body),
        "signed over the raw body"
    );
    assert!(headers.contains_key("x-github-delivery"));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["ref"], "refs/heads/main");
    assert_eq!(payload["created"], true);
    assert_eq!(payload["repository"]["full_name"], "acme/ops");
    assert_eq!(payload["head_commit"]["added"], json!(["requests/a.yaml"]));
    let head = ok(git(
        tmp.path(),
        &[
            "ls-remote",
            &sim.git_url("acme", "ops", Some(TOKEN)),
            "refs/heads/main",
        ],
    ));
    assert_eq!(payload["after"].as_str(), head.split_whitespace().next());
    assert!(sim
        .deliveries()
        .iter()
        .any(|d| d.event == "push" && d.status == Some(200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_can_be_listed_updated_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    let body = json!({"name": "web", "config": {"url": "http://127.0.0.1:9/hook", "content_type": "json"}, "events": ["push"]});
    let h: Value = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::POST,
        "/repos/acme/ops/hooks",
    )
    .json(&body)
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let again = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::POST,
        "/repos/acme/ops/hooks",
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(again.status(), 422, "one hook per URL");
    let id = h["id"].as_u64().unwrap();
    let patched: Value = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::PATCH,
        &format!("/repos/acme/ops/hooks/{id}"),
    )
    .json(&json!({"add_events": ["pull_request"], "active": false}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(patched["events"], json!(["push", "pull_request"]));
    assert_eq!(patched["active"], false);
    let list: Value = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::GET,
        "/repos/acme/ops/hooks",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let reader = api(
        &sim,
        Some(READER),
        reqwest::Method::GET,
        "/repos/acme/ops/hooks",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(reader.status(), 403);
    let del = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::DELETE,
        &format!("/repos/acme/ops/hooks/{id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(del.status(), 204);
    let gone = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::DELETE,
        &format!("/repos/acme/ops/hooks/{id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_follow_githubs_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    ok(push(&sim, tmp.path(), TOKEN, &[("README.md", "x\n")]));
    let sha = ok(git(
        tmp.path(),
        &[
            "ls-remote",
            &sim.git_url("acme", "ops", Some(TOKEN)),
            "refs/heads/main",
        ],
    ));
    let sha = sha.split_whitespace().next().unwrap().to_string();
    let post = |token: Option<&'static str>, body: Value| {
        api(
            &sim,
            token,
            reqwest::Method::POST,
            "/repos/acme/ops/check-runs",
        )
        .json(&body)
        .send()
    };

    let created = post(
        Some(TOKEN),
        json!({"name": "codex-runner/r1", "head_sha": sha, "external_id": "r1"}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let run: Value = created.json().await.unwrap();
    assert_eq!(
        (run["status"].as_str(), run["external_id"].as_str()),
        (Some("queued"), Some("r1"))
    );
    let id = run["id"].as_u64().unwrap();
    let patch = |body: Value| {
        api(
            &sim,
            Some(TOKEN),
            reqwest::Method::PATCH,
            &format!("/repos/acme/ops/check-runs/{id}"),
        )
        .json(&body)
        .send()
    };
    let r: Value = patch(json!({"status": "in_progress"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "in_progress");
    assert_eq!(
        patch(json!({"status": "completed"}))
            .await
            .unwrap()
            .status(),
        422,
        "completed needs a conclusion"
    );
    let annotations: Vec<Value> = (0..51).map(|i| json!({"path": "requests/r1.yaml", "start_line": i + 1, "end_line": i + 1, "annotation_level": "failure", "message": "bad"})).collect();
    let too_many =
        patch(json!({"output": {"title": "t", "summary": "s", "annotations": annotations}}))
            .await
            .unwrap();
    assert_eq!(too_many.status(), 422, "at most 50 annotations per request");
    let done: Value = patch(json!({"conclusion": "success", "output": {"title": "succeeded", "summary": "ran in 1s", "annotations": annotations[..50]}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (done["status"].as_str(), done["conclusion"].as_str()),
        (Some("completed"), Some("success"))
    );
    assert_eq!(done["output"]["annotations_count"], 50);
    assert!(done["completed_at"].is_string());

    for reference in ["main", sha.as_str()] {
        let list: Value = api(
            &sim,
            Some(READER),
            reqwest::Method::GET,
            &format!("/repos/acme/ops/commits/{reference}/check-runs?check_name=codex-runner/r1"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(list["total_count"], 1, "{reference}: {list}");
        assert_eq!(list["check_runs"][0]["id"], id);
    }
    assert_eq!(
        post(Some(READER), json!({"name": "x", "head_sha": sha}))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(None, json!({"name": "x", "head_sha": sha}))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(Some(TOKEN), json!({"name": "x", "head_sha": "deadbeef"}))
            .await
            .unwrap()
            .status(),
        422
    );
    let other = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::GET,
        "/repos/acme/nope/check-runs/1",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(other.status(), 404);
    let repo: Value = api(&sim, Some(READER), reqwest::Method::GET, "/repos/acme/ops")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        repo["permissions"],
        json!({"admin": false, "maintain": false, "push": false, "triage": false, "pull": true})
    );
}

/// Commit `files` on top of `from` and push to `to`.
fn push_to(sim: &ForgeSim, tmp: &Path, from: &str, to: &str, files: &[(&str, &str)]) -> String {
    let (out, dir) = push_as(sim, tmp, TOKEN, from, to, files);
    ok(out);
    ok(git(&dir, &["rev-parse", "HEAD"])).trim().to_string()
}

fn ls_remote(sim: &ForgeSim, tmp: &Path, r: &str) -> String {
    let out = ok(git(
        tmp,
        &["ls-remote", &sim.git_url("acme", "ops", Some(TOKEN)), r],
    ));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_opens_synchronizes_and_merges_with_webhooks() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    ok(push(&sim, tmp.path(), TOKEN, &[("README.md", "x\n")]));
    let (url, got) = receiver().await;
    let hook = json!({"name": "web", "config": {"url": url, "content_type": "json", "secret": SECRET}, "events": ["push", "pull_request"]});
    api(
        &sim,
        Some(TOKEN),
        reqwest::Method::POST,
        "/repos/acme/ops/hooks",
    )
    .json(&hook)
    .send()
    .await
    .unwrap();
    let first = push_to(
        &sim,
        tmp.path(),
        "main",
        "agent/req",
        &[("requests/a.yaml", "kind: echo\n")],
    );

    let created = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::POST,
        "/repos/acme/ops/pulls",
    )
    .json(&json!({"title": "Add a request", "head": "agent/req", "base": "main"}))
    .send()
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let pr: Value = created.json().await.unwrap();
    assert_eq!(
        (pr["number"].as_u64(), pr["head"]["sha"].as_str()),
        (Some(1), Some(first.as_str()))
    );
    let opened = wait_for(&got, "pull_request", 1).await;
    let ev: Value = serde_json::from_slice(&opened[0].1).unwrap();
    assert_eq!(
        (ev["action"].as_str(), ev["number"].as_u64()),
        (Some("opened"), Some(1))
    );
    assert_eq!(
        opened[0].0["x-hub-signature-256"].to_str().unwrap(),
        sign(SECRET, &opened[0].1)
    );
    assert_eq!(ls_remote(&sim, tmp.path(), "refs/pull/1/head"), first);

    let second = push_to(
        &sim,
        tmp.path(),
        "agent/req",
        "agent/req",
        &[("requests/b.yaml", "kind: echo\n")],
    );
    let sync = wait_for(&got, "pull_request", 2).await;
    let ev: Value = serde_json::from_slice(&sync[1].1).unwrap();
    assert_eq!(
        (
            ev["action"].as_str(),
            ev["pull_request"]["head"]["sha"].as_str()
        ),
        (Some("synchronize"), Some(second.as_str()))
    );
    assert_eq!(ls_remote(&sim, tmp.path(), "refs/pull/1/head"), second);

    let base = ls_remote(&sim, tmp.path(), "refs/heads/main");
    let merged: Value = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::PUT,
        "/repos/acme/ops/pulls/1/merge",
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let sha = merged["sha"].as_str().unwrap().to_string();
    assert_eq!(ls_remote(&sim, tmp.path(), "refs/heads/main"), sha);
    let parents = ok(git(
        &sim.repo_path("acme", "ops"),
        &["log", "-1", "--format=%P", &sha],
    ));
    assert_eq!(
        parents.split_whitespace().collect::<Vec<_>>(),
        [base.as_str(), second.as_str()],
        "a real merge commit"
    );
    let closed = wait_for(&got, "pull_request", 3).await;
    let ev: Value = serde_json::from_slice(&closed[2].1).unwrap();
    assert_eq!(
        (
            ev["action"].as_str(),
            ev["pull_request"]["merged"].as_bool()
        ),
        (Some("closed"), Some(true))
    );
    let pushes = wait_for(&got, "push", 3).await;
    let main_push = pushes
        .iter()
        .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap())
        .find(|p| p["after"] == sha.as_str())
        .expect("a push event for the merge");
    assert_eq!(main_push["ref"], "refs/heads/main");
    let again = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::PUT,
        "/repos/acme/ops/pulls/1/merge",
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(again.status(), 405);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT as a GitHub App makes it: RS256, `iss` the app id (a number).
fn app_jwt(key_pem: &[u8], iss: u64, iat: u64, exp: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"iss": iss, "iat": iat, "exp": exp}),
        &key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installation_tokens_need_the_apps_signature_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    ok(push(&sim, tmp.path(), TOKEN, &[("README.md", "hello\n")]));
    let (key_file, public) = forge_sim::app_keypair(&tmp.path().join("app")).unwrap();
    let (other_key, _) = forge_sim::app_keypair(&tmp.path().join("other")).unwrap();
    let key = std::fs::read(&key_file).unwrap();
    assert!(
        String::from_utf8_lossy(&key).starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "GitHub hands out PKCS#1 keys"
    );
    sim.add_app(forge_sim::App {
        id: 42,
        public_key_pem: public.clone(),
        installation_id: 7,
        grants: Token {
            admin: false,
            ..Token::full("")
        },
        token_ttl: std::time::Duration::from_secs(2),
    });
    let mint = |jwt: String, installation: u64| {
        api(
            &sim,
            None,
            reqwest::Method::POST,
            &format!("/app/installations/{installation}/access_tokens"),
        )
        .header("authorization", format!("Bearer {jwt}"))
        .send()
    };
    let now = unix_now();

    // Refused: another key, the wrong app, expired, too long-lived, wrong installation, no JWT,
    // and the classic algorithm confusion (HS256 keyed with the public key).
    let other = std::fs::read(&other_key).unwrap();
    let cases = [
        (
            app_jwt(&other, 42, now - 60, now + 540),
            7,
            401,
            "could not be decoded",
        ),
        (
            app_jwt(&key, 43, now - 60, now + 540),
            7,
            401,
            "could not be decoded",
        ),
        (
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                &json!({"iss": "the-app", "iat": now - 60, "exp": now + 540}),
                &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
            )
            .unwrap(),
            7,
            401,
            "'Issuer' claim",
        ),
        (
            app_jwt(&key, 42, now - 700, now - 100),
            7,
            401,
            "must be a numeric value representing the future",
        ),
        (
            app_jwt(&key, 42, now, now + 3600),
            7,
            401,
            "too far in the future",
        ),
        (app_jwt(&key, 42, now - 60, now + 540), 8, 404, "Not Found"),
        ("not.a.jwt".to_string(), 7, 401, "could not be decoded"),
        (
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"iss": 42, "iat": now - 60, "exp": now + 540}),
                &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
            )
            .unwrap(),
            7,
            401,
            "could not be decoded",
        ),
    ];
    for (jwt, installation, status, message) in cases {
        let r = mint(jwt, installation).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{message}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{body}"
        );
    }
    assert_eq!(sim.minted_tokens(), 0);

    // Accepted: a token with the app's permissions, good for the API and for git.
    let r = mint(app_jwt(&key, 42, now - 60, now + 540), 7)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("ghs_"), "{body}");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["permissions"]["contents"], "write");
    assert_eq!(body["permissions"]["checks"], "write");
    assert!(body["permissions"].get("repository_hooks").is_none());
    assert_eq!(sim.minted_tokens(), 1);
    let repo = api(&sim, Some(&token), reqwest::Method::GET, "/repos/acme/ops")
        .send()
        .await
        .unwrap();
    assert_eq!(repo.status().as_u16(), 200);
    let hooks = api(
        &sim,
        Some(&token),
        reqwest::Method::GET,
        "/repos/acme/ops/hooks",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(hooks.status().as_u16(), 403);
    let body: Value = hooks.json().await.unwrap();
    assert_eq!(body["message"], "Resource not accessible by integration");
    ok(git(
        tmp.path(),
        &["ls-remote", &sim.git_url("acme", "ops", Some(&token))],
    ));

    // Expired: the API says "Bad credentials" and git is refused.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let late = api(&sim, Some(&token), reqwest::Method::GET, "/repos/acme/ops")
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 401);
    let refused = git(
        tmp.path(),
        &["ls-remote", &sim.git_url("acme", "ops", Some(&token))],
    );
    assert!(!refused.status.success(), "an expired token must not fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_can_need_an_app_and_statuses_work_with_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = forge(tmp.path()).await;
    ok(push(&sim, tmp.path(), TOKEN, &[("README.md", "hello\n")]));
    let sha = ok(git(
        tmp.path(),
        &[
            "ls-remote",
            &sim.git_url("acme", "ops", Some(TOKEN)),
            "refs/heads/main",
        ],
    ))
    .split_whitespace()
    .next()
    .unwrap()
    .to_string();

    sim.checks_need_app(true);
    let run = json!({"name": "x", "head_sha": sha});
    let r = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::POST,
        "/repos/acme/ops/check-runs",
    )
    .json(&run)
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a personal token cannot write check runs here"
    );
    sim.checks_need_app(false);
    let r = api(
        &sim,
        Some(TOKEN),
        reqwest::Method::POST,
        "/repos/acme/ops/check-runs",
    )
    .json(&run)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let post = |token: &'static str, body: Value| {
        api(
            &sim,
            Some(token),
            reqwest::Method::POST,
            &format!("/repos/acme/ops/statuses/{sha}"),
        )
        .json(&body)
        .send()
    };
    let first = post(
        TOKEN,
        json!({"state": "pending", "context": "codex-runner/a", "description": "queued"}),
    );
    assert_eq!(first.await.unwrap().status().as_u16(), 201);
    let second = post(
        TOKEN,
        json!({"state": "success", "context": "codex-runner/a", "target_url": "http://x/log"}),
    );
    assert_eq!(second.await.unwrap().status().as_u16(), 201);
    let bad_state = post(TOKEN, json!({"state": "done", "context": "c"}));
    assert_eq!(bad_state.await.unwrap().status().as_u16(), 422);
    let long = post(
        TOKEN,
        json!({"state": "success", "description": "x".repeat(141)}),
    );
    assert_eq!(long.await.unwrap().status().as_u16(), 422);
    let reader = post(READER, json!({"state": "success", "context": "c"}));
    assert_eq!(reader.await.unwrap().status().as_u16(), 403);
    let list: Value = api(
        &sim,
        Some(READER),
        reqwest::Method::GET,
        "/repos/acme/ops/commits/main/statuses",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["success", "pending"], "newest first");
    assert_eq!(list[0]["target_url"], "http://x/log");
    let kept = sim.statuses("acme", "ops", &sha);
    assert_eq!(kept.len(), 2);
}
