//! `codex-runner run`: webhooks from the local forge trigger passes; bad and replayed
//! deliveries run nothing; the endpoint answers under load.

use crate::common::{docker, health, log_path, status_path, wait_until, Daemon, Repo};

use std::time::{Duration, Instant};

use forge_sim::{sign, ForgeSim, Token};
use serde_json::{json, Value};

const TOKEN: &str = "ghp_runner";
const SECRET: &str = "webhook-secret-for-tests";

fn start_daemon(repo: &Repo, sim: &ForgeSim) -> Daemon {
    let dir = repo.tmp.path();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let config = format!(
        "[runner]\nname = \"{runner}\"\nstate_dir = \"{state}\"\n\n[repository]\nurl = \"{git}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nwebhook_secret_file = \"{secret}\"\npoll_interval = \"1h\"\n\n[forge]\napi_url = \"{api}\"\nrepository = \"acme/ops\"\ntoken_file = \"{token}\"\n",
        runner = repo.runner,
        state = repo.state.display(),
        git = sim.git_url("acme", "ops", None),
        secret = dir.join("secret").display(),
        api = sim.url(),
        token = dir.join("token").display(),
    );
    let path = dir.join("runner.toml");
    std::fs::write(&path, config).unwrap();
    crate::common::spawn_daemon(&path)
}

/// Point a webhook of acme/ops at the daemon; the answer's status.
async fn hook_daemon(sim: &ForgeSim, daemon: &Daemon) -> u16 {
    let config =
        json!({"url": format!("{}/webhook", daemon.url), "content_type": "json", "secret": SECRET});
    reqwest::Client::new()
        .post(format!("{}/repos/acme/ops/hooks", sim.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "web", "config": config, "events": ["push", "pull_request"]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn forge_and_repo(runner: &str) -> (ForgeSim, Repo) {
    crate::common::on_forge(runner, vec![Token::full(TOKEN)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_webhook_runs_the_request_and_completes_its_check_run() {
    docker();
    let (sim, mut repo) = forge_and_repo("t-daemon").await;
    let daemon = start_daemon(&repo, &sim);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(hook_daemon(&sim, &daemon).await, 201);

    let merge = tokio::task::block_in_place(|| {
        repo.merge_pr(&[(
            "requests/hello.yaml",
            b"kind: echo\nparams: {message: from a webhook}\n",
        )])
    });
    wait_until("the request's log on main", async || {
        repo.main_file(&status_path("hello")).is_some()
    })
    .await;
    assert_eq!(repo.status("hello")["state"], "succeeded");
    assert_eq!(repo.status("hello")["commit"], merge.as_str());
    wait_until("the completed check run", async || {
        let list: Value = reqwest::Client::new()
            .get(format!(
                "{}/repos/acme/ops/commits/{merge}/check-runs",
                sim.url()
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["check_runs"][0]["conclusion"] == "success"
    })
    .await;
    let pushes: Vec<_> = sim
        .deliveries()
        .into_iter()
        .filter(|d| d.event == "push")
        .collect();
    assert!(
        pushes.iter().all(|d| d.status.is_some_and(|s| s < 300)),
        "every delivery answered 2xx"
    );
    // The runner's own push is a delivery too, and it does not loop.
    let h = health(&daemon).await;
    assert!(h["passes"].as_u64().unwrap() <= 3, "{h}");
    assert_eq!(h["last_error"], Value::Null, "{h}");
    repo.assert_no_containers();

    // The metrics listener tells the same story, in Prometheus terms, apart from the webhook.
    let scraped = reqwest::get(format!("{}/metrics", daemon.ops))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        scraped.headers()
    );
    let text = scraped.text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(
        value("codex_runner_requests_total{kind=\"echo\",state=\"succeeded\"}"),
        1.0
    );
    assert!(
        value("codex_runner_passes_total{outcome=\"ok\"}") >= 2.0,
        "{text}"
    );
    assert_eq!(value("codex_runner_pushes_total"), 1.0);
    assert_eq!(value("codex_runner_requests_running"), 0.0);
    assert_eq!(
        value("codex_runner_request_duration_seconds_count{kind=\"echo\"}"),
        1.0
    );
    assert!(value("codex_runner_last_successful_pass_timestamp_seconds") > 1.7e9);
    // The check run's calls went through, and nothing waits for the forge.
    assert!(
        value("codex_runner_forge_calls_total{outcome=\"ok\"}") >= 3.0,
        "{text}"
    );
    assert_eq!(value("codex_runner_pending_check_updates"), 0.0);
    let passes_asked = value("codex_runner_webhook_deliveries_total{outcome=\"pass\"}");
    assert!(
        (1.0..=pushes.len() as f64).contains(&passes_asked),
        "{passes_asked} of {} push deliveries asked for a pass:\n{text}",
        pushes.len()
    );
    // Health too: alive, and ready (a pass succeeded, the remote answered, Docker answers).
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let got = reqwest::get(format!("{}{path}", daemon.ops)).await.unwrap();
        assert_eq!(got.status(), 200, "{path}");
        assert_eq!(got.text().await.unwrap(), body, "{path}");
    }
    // The webhook's listener faces the forge: it serves /webhook and nothing else.
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        let got = reqwest::get(format!("{}{path}", daemon.url)).await.unwrap();
        assert_eq!(got.status(), 404, "{path} stays off the webhook's listener");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_replays_run_nothing_and_a_thousand_deliveries_are_answered() {
    docker();
    let (sim, repo) = forge_and_repo("t-hooks").await;
    let daemon = start_daemon(&repo, &sim);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>, signature: String, delivery: String| {
        client
            .post(format!("{}/webhook", daemon.url))
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
    };
    let push =
        serde_json::to_vec(&json!({"ref": "refs/heads/main", "commits": [{"message": "merge"}]}))
            .unwrap();
    let forged = post(
        push.clone(),
        sign("not-the-secret", &push),
        "d-forged".into(),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    let unsigned = client
        .post(format!("{}/webhook", daemon.url))
        .header("x-github-event", "push")
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        health(&daemon).await["passes_asked"],
        1,
        "nothing was queued by bad deliveries"
    );

    let first = post(push.clone(), sign(SECRET, &push), "d-1".into())
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let replay = post(push.clone(), sign(SECRET, &push), "d-1".into())
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(
        replay.text().await.unwrap().trim(),
        "duplicate delivery ignored"
    );
    assert_eq!(health(&daemon).await["passes_asked"], 2);

    // A thousand deliveries, 50 at a time: every one answered, the work coalesced.
    let started = Instant::now();
    let mut answered = 0;
    for batch in 0..20 {
        let mut calls = Vec::new();
        for i in 0..50 {
            let id = format!("load-{batch}-{i}");
            calls.push(post(push.clone(), sign(SECRET, &push), id));
        }
        for r in futures_util::future::join_all(calls).await {
            assert!(r.unwrap().status().is_success());
            answered += 1;
        }
    }
    println!("1000 deliveries answered in {:?}", started.elapsed());
    assert_eq!(answered, 1000);
    wait_until("the queued passes", async || {
        let h = health(&daemon).await;
        h["passes_asked"] == 1002 && h["passes"].as_u64() >= Some(2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passes = health(&daemon).await["passes"].as_u64().unwrap();
    assert!(
        passes < 50,
        "1002 asks collapsed into a few passes, not {passes}"
    );
    // Each delivery counted by what it got.
    let delivered = async |outcome: &str| {
        let name = format!("codex_runner_webhook_deliveries_total{{outcome=\"{outcome}\"}}");
        crate::common::metric(&daemon, &name).await
    };
    assert_eq!(delivered("bad_signature").await, Some(2.0));
    assert_eq!(delivered("duplicate").await, Some(1.0));
    assert_eq!(delivered("pass").await, Some(1001.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_are_validated_with_annotations_and_never_run() {
    docker();
    let (sim, repo) = forge_and_repo("t-prs").await;
    let daemon = start_daemon(&repo, &sim);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    let client = reqwest::Client::new();
    hook_daemon(&sim, &daemon).await;
    let open_pr = |branch: &'static str, files: Vec<(&'static str, String)>| {
        let repo = &repo;
        let client = client.clone();
        let api = sim.url();
        async move {
            let head = tokio::task::block_in_place(|| {
                repo.git(&["fetch", "-q", "origin"]);
                repo.git(&["checkout", "-q", "-B", branch, "origin/main"]);
                for (file, text) in &files {
                    repo.write(file, text.as_bytes());
                }
                repo.git(&["add", "-A"]);
                repo.git(&["commit", "-q", "-m", branch]);
                repo.git(&["push", "-q", "origin", branch]);
                repo.git(&["rev-parse", "HEAD"]).trim().to_string()
            });
            let r = client
                .post(format!("{api}/repos/acme/ops/pulls"))
                .bearer_auth(TOKEN)
                .json(&json!({"title": branch, "head": branch, "base": "main"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            head
        }
    };
    let validate_run = |head: String| {
        let api = sim.url();
        async move {
            let list = crate::common::forge_get(
                &api,
                TOKEN,
                &format!(
                    "/repos/acme/ops/commits/{head}/check-runs?check_name=codex-runner/validate"
                ),
            );
            list["check_runs"]
                .as_array()
                .and_then(|a| a.first().cloned())
        }
    };
    // The validation run of `head`, once it is there.
    let settled = |what: &'static str, head: String| {
        let validate_run = &validate_run;
        async move {
            wait_until(what, async || validate_run(head.clone()).await.is_some()).await;
            validate_run(head).await.unwrap()
        }
    };
    let annotations_of = |run: &Value| {
        crate::common::forge_get(
            &sim.url(),
            TOKEN,
            &format!("/repos/acme/ops/check-runs/{}/annotations", run["id"]),
        )
    };

    let good = open_pr(
        "agent/good",
        vec![(
            "requests/hello.yaml",
            "kind: echo\nparams: {message: reviewed}\n".into(),
        )],
    )
    .await;
    let run = settled("the green validation", good.clone()).await;
    assert_eq!(run["conclusion"], "success", "{run}");
    assert!(
        run["output"]["summary"]
            .as_str()
            .unwrap()
            .contains("requests/hello.yaml"),
        "{run}"
    );

    let bad = open_pr(
        "agent/bad",
        vec![(
            "requests/broken.yaml",
            "kind: deplyo\nparams:\n  service: 5\n".into(),
        )],
    )
    .await;
    let run = settled("the red validation", bad.clone()).await;
    assert_eq!(run["conclusion"], "failure", "{run}");
    let annotations = annotations_of(&run);
    let first = &annotations[0];
    assert_eq!(
        (first["path"].as_str(), first["start_line"].as_u64()),
        (Some("requests/broken.yaml"), Some(1)),
        "{annotations}"
    );
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("unknown kind `deplyo`"),
        "{annotations}"
    );
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `deploy`?"),
        "{annotations}"
    );

    // Two pull requests fork from main before a `greet` handler lands there: one adds a
    // greet request (valid: validation sees main's handlers plus its own changes), one adds
    // another handler at the same place in the index (a conflict, named on that file).
    let fork = tokio::task::block_in_place(|| {
        repo.git(&["fetch", "-q", "origin"]);
        repo.git(&["rev-parse", "origin/main"]).trim().to_string()
    });
    let index = std::fs::read_to_string(repo.work.join("handlers/index.yml")).unwrap();
    let branch_from_fork = |branch: &str, file: &str, text: &str| {
        tokio::task::block_in_place(|| {
            repo.git(&["checkout", "-q", "-B", branch, &fork]);
            repo.write(file, text.as_bytes());
            repo.git(&["add", "-A"]);
            repo.git(&["commit", "-q", "-m", branch]);
            repo.git(&["push", "-q", "origin", branch]);
            repo.git(&["rev-parse", "HEAD"]).trim().to_string()
        })
    };
    let stale = branch_from_fork(
        "agent/stale",
        "requests/greet-1.yaml",
        "kind: greet\nparams: {message: hello}\n",
    );
    let clash = branch_from_fork(
        "agent/clash",
        "handlers/index.yml",
        &format!(
            "{index}\n  shout:\n    run: handlers/echo.sh\n    image: codex-runner/busybox:1\n"
        ),
    );
    tokio::task::block_in_place(|| {
        repo.git(&["checkout", "-q", "main"]);
        repo.push_main(
            &[(
                "handlers/index.yml",
                format!("{index}\n  greet:\n    run: handlers/echo.sh\n    image: codex-runner/busybox:1\n")
                    .as_bytes(),
            )],
            "add the greet handler",
        );
    });
    for branch in ["agent/stale", "agent/clash"] {
        let r = client
            .post(format!("{}/repos/acme/ops/pulls", sim.url()))
            .bearer_auth(TOKEN)
            .json(&json!({"title": branch, "head": branch, "base": "main"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    wait_until("both validations", async || {
        validate_run(stale.clone()).await.is_some() && validate_run(clash.clone()).await.is_some()
    })
    .await;
    let run = validate_run(stale.clone()).await.unwrap();
    assert_eq!(
        run["conclusion"], "success",
        "main's new handler is seen: {run}"
    );
    let run = validate_run(clash.clone()).await.unwrap();
    assert_eq!(run["conclusion"], "failure", "{run}");
    let annotations = annotations_of(&run);
    assert_eq!(
        annotations[0]["path"], "handlers/index.yml",
        "{annotations}"
    );
    assert_eq!(annotations[0]["title"], "merge-conflict", "{annotations}");

    // A pull request that changes a handler and adds a request for it: the request is
    // flagged before the merge, as the pass would reject it.
    let echo = std::fs::read_to_string(repo.work.join("handlers/echo.sh")).unwrap();
    let sneaky = open_pr(
        "agent/sneaky",
        vec![
            ("handlers/echo.sh", format!("{echo}echo extra\n")),
            (
                "requests/sneaky.yaml",
                "kind: echo\nparams: {message: hi}\n".into(),
            ),
        ],
    )
    .await;
    let run = settled("the handler-change validation", sneaky.clone()).await;
    assert_eq!(run["conclusion"], "failure", "{run}");
    let annotations = annotations_of(&run);
    assert_eq!(
        (
            annotations[0]["path"].as_str(),
            annotations[0]["title"].as_str()
        ),
        (Some("requests/sneaky.yaml"), Some("handler-change")),
        "{annotations}"
    );
    assert!(
        annotations[0]["message"]
            .as_str()
            .unwrap()
            .contains("handlers/echo.sh"),
        "{annotations}"
    );

    // Nothing from a pull request ran.
    assert!(
        repo.main_file(&log_path("hello")).is_none()
            && repo.main_file(&log_path("broken")).is_none()
            && repo.main_file(&log_path("greet-1")).is_none()
    );
    repo.assert_no_containers();
}

/// A pull request forked long before the mainline's last 32 commits: the validator's shallow
/// mirror deepens until the two histories meet, and judges the pull request by what it
/// changed since its fork (here: a handler and a request for it, flagged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_fork_is_validated_from_a_shallow_mirror_deepened_to_its_fork_point() {
    docker();
    let (sim, repo) = forge_and_repo("t-pr-old").await;
    let echo = std::fs::read_to_string(repo.work.join("handlers/echo.sh")).unwrap();
    let old = tokio::task::block_in_place(|| {
        repo.git(&["checkout", "-q", "-B", "agent/old", "origin/main"]);
        repo.write("handlers/echo.sh", format!("{echo}echo extra\n").as_bytes());
        repo.write(
            "requests/old.yaml",
            b"kind: echo\nparams: {message: from long ago}\n",
        );
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "an old branch"]);
        repo.git(&["push", "-q", "origin", "agent/old"]);
        let head = repo.git(&["rev-parse", "HEAD"]).trim().to_string();
        // Sixty commits land on main after the fork, in one push.
        repo.git(&["checkout", "-q", "main"]);
        for i in 0..60 {
            repo.write("docs/notes.md", format!("note {i}\n").as_bytes());
            repo.git(&["add", "-A"]);
            repo.git(&["commit", "-q", "-m", &format!("note {i}")]);
        }
        repo.git(&["push", "-q", "origin", "main"]);
        head
    });
    let daemon = start_daemon(&repo, &sim);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    hook_daemon(&sim, &daemon).await;
    let r = reqwest::Client::new()
        .post(format!("{}/repos/acme/ops/pulls", sim.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"title": "old", "head": "agent/old", "base": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let run_of = |head: String| {
        let api = sim.url();
        async move {
            crate::common::forge_get(
                &api,
                TOKEN,
                &format!(
                    "/repos/acme/ops/commits/{head}/check-runs?check_name=codex-runner/validate"
                ),
            )["check_runs"]
                .as_array()
                .and_then(|a| a.first().cloned())
        }
    };
    wait_until("the validation of the old fork", async || {
        run_of(old.clone()).await.is_some()
    })
    .await;
    let run = run_of(old.clone()).await.unwrap();
    assert_eq!(run["conclusion"], "failure", "{run}");
    let annotations = crate::common::forge_get(
        &sim.url(),
        TOKEN,
        &format!("/repos/acme/ops/check-runs/{}/annotations", run["id"]),
    );
    assert_eq!(
        (
            annotations[0]["path"].as_str(),
            annotations[0]["title"].as_str()
        ),
        (Some("requests/old.yaml"), Some("handler-change")),
        "only what the branch changed since its fork counts: {annotations}"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("deepening the mirror to find where the pull request forked"),
        "the first fetch was shallow, then deepened: {log}"
    );
}

/// Every push the remote takes, one line each: its ref updates (a branch update with its
/// commit's subject), sorted.
const PUSH_LOG_HOOK: &str = r#"#!/bin/sh
zero=0000000000000000000000000000000000000000
line=""
while read old new ref; do
  case "$ref" in
    refs/heads/*) what="update $ref $(git log -1 --format=%s "$new")" ;;
    *) if [ "$old" = "$zero" ]; then what="create $ref"
       elif [ "$new" = "$zero" ]; then what="delete $ref"
       else what="update $ref"; fi ;;
  esac
  line="$line$what
"
done
printf '%s' "$line" | sort | paste -sd'|' >> "$GIT_DIR/pushes.log"
"#;

/// A daemon's lone request costs two pushes: its claim and its result. The claim's deletion
/// rides on the next pass's first push (that pass's sweep finds every claim of a recorded
/// request, a dead runner's too), and what is still kept when the daemon stops goes in one
/// last push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemons_claims_ride_on_the_next_passes_first_push_and_go_when_it_stops() {
    docker();
    let mut repo = Repo::new("t-ride");
    let hook = repo.origin.join("hooks/pre-receive");
    std::fs::write(&hook, PUSH_LOG_HOOK).unwrap();
    crate::common::sh(&repo.origin, "chmod", &["+x", hook.to_str().unwrap()]);
    let git = crate::common::GitDaemon::start(repo.tmp.path());
    let dir = repo.tmp.path();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let config = dir.join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nname = \"t-ride\"\nstate_dir = \"{}\"\n\n[repository]\nurl = \"git://127.0.0.1:{}/origin.git\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nwebhook_secret_file = \"{}\"\npoll_interval = \"1h\"\n",
            repo.state.display(),
            git.port,
            dir.join("secret").display()
        ),
    )
    .unwrap();
    let mut daemon = crate::common::spawn_daemon(&config);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    let push = serde_json::to_vec(&json!({"ref": "refs/heads/main"})).unwrap();
    let nudge = |delivery: &'static str| {
        let (url, push) = (daemon.url.clone(), push.clone());
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/webhook"))
                .header("x-github-event", "push")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", sign(SECRET, &push))
                .body(push)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    let origin = repo.origin.clone();
    let claims = || {
        crate::common::sh(
            &origin,
            "git",
            &["for-each-ref", "--format=%(refname)", "refs/codex/"],
        )
    };
    let claim = |id: &str| format!("refs/codex/claims/main/{id}");
    for (id, delivery) in [("ride-1", "d-1"), ("ride-2", "d-2")] {
        tokio::task::block_in_place(|| {
            repo.merge_pr(&[(
                &format!("requests/{id}.yaml"),
                b"kind: echo\nparams: {message: alone}\n",
            )])
        });
        nudge(delivery).await;
        wait_until("the request's result on main", async || {
            repo.main_file(&status_path(id)).is_some()
        })
        .await;
        assert_eq!(claims().trim(), claim(id), "kept for the next pass");
        if id == "ride-1" {
            // As if a runner that died after publishing ride-1 had left its claim (put past
            // the hook): the sweep drops it all the same.
            crate::common::put_claim(&repo.origin, "ride-1", "{}");
        }
    }
    tokio::task::block_in_place(|| {
        let pid = i32::try_from(daemon.child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let exit = daemon.child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
    });
    assert_eq!(
        claims().trim(),
        "",
        "the daemon dropped its claims as it stopped"
    );
    let log = std::fs::read_to_string(repo.origin.join("pushes.log")).unwrap();
    let runners: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refs/codex/") || l.contains("codex: "))
        .collect();
    assert_eq!(
        runners,
        [
            format!("create {}", claim("ride-1")),
            "update refs/heads/main codex: ride-1 succeeded".to_string(),
            format!("create {}|delete {}", claim("ride-2"), claim("ride-1")),
            "update refs/heads/main codex: ride-2 succeeded".to_string(),
            format!("delete {}", claim("ride-2")),
        ],
        "{log}"
    );
}

/// Polling asks for a pass when the branch moves, but not when it moved by the runner's own
/// results on top of what its pass planned from: that pass would find nothing new. With no
/// pass to carry it, the request's claim is dropped after a quiet spell (at most the poll
/// interval), without a pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_does_not_answer_the_runners_own_push_with_a_pass() {
    docker();
    let mut repo = Repo::new("t-poll-own");
    let config = repo.daemon_config("runner.toml", "1s");
    let daemon = crate::common::spawn_daemon(&config);
    // The start-up pass, then the one polling asks for at its first look.
    wait_until("the first two passes", async || {
        health(&daemon).await["passes"].as_u64() >= Some(2)
    })
    .await;
    tokio::task::block_in_place(|| {
        repo.merge_pr(&[(
            "requests/polled.yaml",
            b"kind: echo\nparams: {message: polled}\n",
        )])
    });
    wait_until("the request's result on main", async || {
        repo.main_file(&status_path("polled")).is_some()
    })
    .await;
    // Three more looks at the branch, which the runner's own push moved.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let h = health(&daemon).await;
    assert_eq!(
        h["passes"], 3,
        "one pass for the merge, none for the results or the claim: {h}"
    );
    assert_eq!(repo.status("polled")["state"], "succeeded");
    let claims = crate::common::sh(
        &repo.origin,
        "git",
        &["for-each-ref", "--format=%(refname)", "refs/codex/"],
    );
    assert_eq!(claims.trim(), "", "the claim outlived the quiet spell");

    // `status` finds the daemon where it noted it answers (its port was the system's choice).
    let status = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"))
            .args([
                "status",
                "--config",
                config.to_str().unwrap(),
                "--format",
                format,
            ])
            .output()
            .unwrap()
    };
    let json = status("json");
    assert_eq!(
        json.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let said: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(said["daemon"]["answering"], true, "{said}");
    assert_eq!(said["daemon"]["runner"], "t-poll-own", "{said}");
    assert_eq!(said["daemon"]["running"], 0, "{said}");
    assert_eq!(
        (&said["results_waiting"], &said["attempts_unfinished"]),
        (&json!(0), &json!(0)),
        "{said}"
    );
    let text = String::from_utf8_lossy(&status("text").stdout).into_owned();
    assert!(text.contains("answering; runner t-poll-own"), "{text}");
    assert!(text.contains("last pass              succeeded"), "{text}");
    // Gone: `status` says so and exits 1, still showing what waits in the state directory.
    drop(daemon);
    let gone = status("text");
    let text = String::from_utf8_lossy(&gone.stdout).into_owned();
    assert_eq!(gone.status.code(), Some(1), "{text}");
    assert!(
        text.contains("daemon                 not answering"),
        "{text}"
    );
    assert!(text.contains("results waiting        0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_pass_fails_is_alive_but_not_ready_and_says_only_which_check_failed() {
    docker();
    let repo = Repo::new("t-unready");
    repo.push_main(
        &[("handlers/index.yml", b"handlers: [this is not a map\n")],
        "break the index",
    );
    let config = repo.daemon_config("runner.toml", "1h");
    let daemon = crate::common::spawn_daemon(&config);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    let alive = reqwest::get(format!("{}/healthz", daemon.ops))
        .await
        .unwrap();
    assert_eq!(alive.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", daemon.ops))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.text().await.unwrap(),
        "not ready: the last pass failed\n",
        "which check failed, not the repository's internals"
    );
    // The details are for the operator: in /status on the same private listener, and the log.
    let status = health(&daemon).await;
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("handlers/index.yml")),
        "{status}"
    );
    let metrics = reqwest::get(format!("{}/metrics", daemon.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "codex_runner_passes_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_container_engine_and_the_remote_going_and_coming_back() {
    docker();
    let repo = Repo::new("t-readyz");
    let dir = repo.tmp.path();
    // The engine, reached through a link this test can take away and put back.
    let real = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let link = dir.join("docker.sock");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let config = dir.join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nname = \"t-readyz\"\nstate_dir = \"{}\"\n\n[repository]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nwebhook_secret_file = \"{}\"\npoll_interval = \"1h\"\nwebhook_healthz = true\n",
            repo.state.display(),
            repo.origin.display(),
            dir.join("secret").display()
        ),
    )
    .unwrap();
    let host = format!("unix://{}", link.display());
    let daemon = crate::common::spawn_daemon_env(&config, &[("DOCKER_HOST", host.as_str())]);
    wait_until("the start-up pass", async || {
        health(&daemon).await["passes"].as_u64() >= Some(1)
    })
    .await;
    let ready = async || {
        let r = reqwest::get(format!("{}/readyz", daemon.ops))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(ready().await, (200, "ready\n".to_string()));
    // Asked for (`webhook_healthz`), the webhook's listener answers a probe too, and no more.
    let probe = reqwest::get(format!("{}/healthz", daemon.url))
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    assert_eq!(probe.text().await.unwrap(), "ok\n");
    for path in ["/status", "/metrics", "/readyz"] {
        let got = reqwest::get(format!("{}{path}", daemon.url)).await.unwrap();
        assert_eq!(got.status(), 404, "{path}");
    }

    std::fs::remove_file(&link).unwrap();
    assert_eq!(
        ready().await,
        (
            503,
            "not ready: the container engine does not answer\n".to_string()
        )
    );
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_eq!(ready().await.0, 200);

    // The remote goes: the pass a push asks for fails, and readiness says so until one succeeds.
    let push =
        serde_json::to_vec(&json!({"ref": "refs/heads/main", "commits": [{"message": "merge"}]}))
            .unwrap();
    let deliver = async |id: &str| {
        let r = reqwest::Client::new()
            .post(format!("{}/webhook", daemon.url))
            .header("x-github-event", "push")
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", sign(SECRET, &push))
            .body(push.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    };
    let gone = dir.join("origin-gone.git");
    std::fs::rename(&repo.origin, &gone).unwrap();
    deliver("d-gone").await;
    wait_until("the failed pass", async || {
        health(&daemon).await["failed_passes"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(
        ready().await,
        (503, "not ready: the last pass failed\n".to_string())
    );
    std::fs::rename(&gone, &repo.origin).unwrap();
    deliver("d-back").await;
    wait_until("a pass that succeeds", async || {
        health(&daemon).await["last_error"].is_null()
    })
    .await;
    assert_eq!(ready().await, (200, "ready\n".to_string()));
}
