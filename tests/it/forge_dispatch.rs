//! dispatch with check runs, against the local GitHub-compatible forge.

use crate::common::{docker, log_path, status_path};

use forge_sim::{Faults, ForgeSim, Token};
use serde_json::Value;

const TOKEN: &str = "ghp_runner";

fn api_get(sim: &ForgeSim, path: &str) -> Value {
    crate::common::forge_get(&sim.url(), TOKEN, path)
}

fn runs(sim: &ForgeSim, sha: &str) -> Vec<Value> {
    api_get(sim, &format!("/repos/acme/ops/commits/{sha}/check-runs"))["check_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `dispatch` flags reporting to acme/ops on `sim` with the token, written to a file in `dir`.
fn forge_flags(sim: &ForgeSim, dir: &std::path::Path) -> Vec<String> {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    [
        "--forge-api",
        &sim.url(),
        "--forge-repo",
        "acme/ops",
        "--forge-token-file",
        token_file.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec()
}

fn run_named<'a>(runs: &'a [Value], name: &str) -> &'a Value {
    runs.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no check run {name} in {runs:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_show_every_request_and_catch_up_after_an_outage() {
    docker();
    let (sim, mut repo) = crate::common::on_forge("t-checks", vec![Token::full(TOKEN)]).await;
    let url = sim.git_url("acme", "ops", Some(TOKEN));
    let tmp = repo.tmp.path().to_path_buf();
    let merge = repo.merge_pr(&[
        (
            "requests/hello.yaml",
            b"kind: echo\nparams: {message: hi}\n",
        ),
        (
            "requests/boom.yaml",
            b"kind: echo\nparams: {message: x, exit: 3}\n",
        ),
        ("requests/typo.yaml", b"kind: echo\nparams:\n  mesage: x\n"),
    ]);
    let mut flags = forge_flags(&sim, &tmp);
    flags.extend(["--forge-attempts".to_string(), "2".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // The forge is down: requests still run and their logs still reach main.
    sim.set_faults(Faults {
        every: 1,
        answers: vec![502],
    });
    let pass = tokio::task::block_in_place(|| repo.dispatch_url(&url, &flags)).ok();
    let states = pass.states();
    assert_eq!(
        (states["hello"].as_str(), states["boom"].as_str()),
        ("succeeded", "failed")
    );
    assert_eq!(repo.status("typo")["state"], "rejected");
    sim.set_faults(Faults::default());
    assert!(
        runs(&sim, &merge).is_empty(),
        "nothing reached the forge during the outage"
    );
    assert!(!pass.stderr.contains(TOKEN), "the token is never logged");

    // Back up: the next pass brings every check run up to date, and runs a new request.
    let late_merge = repo.merge_pr(&[(
        "requests/late.yaml",
        b"kind: echo\nparams: {message: late}\n",
    )]);
    let pass = tokio::task::block_in_place(|| repo.dispatch_url(&url, &flags)).ok();
    assert_eq!(pass.states()["late"], "succeeded");
    let done = runs(&sim, &merge);
    assert_eq!(
        done.len(),
        3,
        "one run per request, no duplicates: {done:#?}"
    );
    let hello = run_named(&done, "codex-runner/hello");
    assert_eq!(
        (hello["status"].as_str(), hello["conclusion"].as_str()),
        (Some("completed"), Some("success"))
    );
    assert_eq!(hello["external_id"], "hello");
    let link = hello["details_url"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/acme/ops/blob/", sim.url()))
            && link.ends_with(&format!("/{}", log_path("hello"))),
        "{link}"
    );
    assert!(
        hello["output"]["text"]
            .as_str()
            .unwrap()
            .contains("message: hi"),
        "{hello}"
    );
    assert_eq!(
        run_named(&done, "codex-runner/boom")["conclusion"],
        "failure"
    );
    let typo = run_named(&done, "codex-runner/typo");
    assert_eq!(typo["conclusion"], "action_required");
    assert!(
        typo["output"]["annotations_count"].as_u64().unwrap() >= 1,
        "{typo}"
    );
    let late = runs(&sim, &late_merge);
    let late = run_named(&late, "codex-runner/late");
    assert_eq!(
        (late["status"].as_str(), late["conclusion"].as_str()),
        (Some("completed"), Some("success"))
    );
    assert!(late["started_at"].is_string());
    let pending = repo.state.join("checks");
    let left: Vec<_> = walk(&pending);
    assert!(left.is_empty(), "nothing left to send: {left:?}");
    repo.assert_no_containers();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_between_execution_and_the_check_run_update_catches_up() {
    docker();
    let (sim, mut repo) = crate::common::on_forge("t-killed", vec![Token::full(TOKEN)]).await;
    let url = sim.git_url("acme", "ops", Some(TOKEN));
    let tmp = repo.tmp.path().to_path_buf();
    let merge = repo.merge_pr(&[(
        "requests/hello.yaml",
        b"kind: echo\nparams: {message: once}\n",
    )]);
    let flags = forge_flags(&sim, &tmp);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // Every API call takes 3 s: the handler runs and its log is pushed while the check-run
    // updates are still on their way. The runner is killed (SIGKILL) the moment the log is
    // on main.
    sim.set_faults(Faults {
        every: 1,
        answers: vec![0],
    });
    let mut child = repo
        .dispatch_command(&url, &flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while repo.main_file(&status_path("hello")).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never reached main"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pass ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    sim.set_faults(Faults::default());
    let before = runs(&sim, &merge);
    assert!(
        before.iter().all(|r| r["status"] != "completed"),
        "killed before the completed update reached the forge: {before:#?}"
    );
    assert_eq!(repo.status("hello")["state"], "succeeded");
    let commits = repo.main_commits();

    // The next runner process sends what the dead one left: nothing runs again.
    let pass = tokio::task::block_in_place(|| repo.dispatch_url(&url, &flags)).ok();
    assert!(
        pass.states().is_empty(),
        "nothing ran again: {:?}",
        pass.states()
    );
    assert_eq!(repo.main_commits(), commits, "nothing new to push");
    let started = repo
        .log("hello")
        .iter()
        .filter(|e| e["event"] == "started")
        .count();
    assert_eq!(started, 1, "the handler ran once");
    let after = runs(&sim, &merge);
    assert_eq!(after.len(), 1, "one check run, not a second: {after:#?}");
    let run = run_named(&after, "codex-runner/hello");
    assert_eq!(
        (&run["status"], &run["conclusion"]),
        (&Value::from("completed"), &Value::from("success"))
    );
    assert!(
        run["details_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}", log_path("hello"))),
        "{run}"
    );
    repo.assert_no_containers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_end_right_with_no_duplicate_while_a_third_of_forge_calls_fail() {
    docker();
    let (sim, mut repo) = crate::common::on_forge("t-flaky-forge", vec![Token::full(TOKEN)]).await;
    let url = sim.git_url("acme", "ops", Some(TOKEN));
    let tmp = repo.tmp.path().to_path_buf();
    let requests: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let exit = if i % 3 == 0 { 3 } else { 0 };
            (
                format!("requests/flaky-{i:02}.yaml"),
                format!("kind: echo\nparams: {{message: m{i}, exit: {exit}}}\n").into_bytes(),
            )
        })
        .collect();
    let merge = repo.merge_pr(&crate::common::borrowed(&requests));
    let flags = forge_flags(&sim, &tmp);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // One API call in three fails: 500, 502 or 429 with Retry-After.
    sim.set_faults(Faults {
        every: 3,
        answers: vec![500, 502, 429],
    });
    let pass = tokio::task::block_in_place(|| repo.dispatch_url(&url, &flags)).ok();
    sim.set_faults(Faults::default());
    let (calls, faulted) = sim.api_stats();
    assert!(faulted * 4 >= calls, "a third failed: {faulted} of {calls}");
    assert_eq!(pass.states().len(), 12);
    let done = runs(&sim, &merge);
    assert_eq!(done.len(), 12, "one check run per request: {done:#?}");
    for i in 0..12 {
        let run = run_named(&done, &format!("codex-runner/flaky-{i:02}"));
        let want = if i % 3 == 0 { "failure" } else { "success" };
        assert_eq!(
            (run["status"].as_str(), run["conclusion"].as_str()),
            (Some("completed"), Some(want)),
            "{run}"
        );
    }
    println!(
        "flaky forge: {faulted} of {calls} API calls failed; 12 check runs, each right, none twice"
    );
    repo.assert_no_containers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_server_failing_every_fifth_request_still_gets_every_result_once() {
    docker();
    let (sim, mut repo) = crate::common::on_forge("t-git-503", vec![Token::full(TOKEN)]).await;
    let url = sim.git_url("acme", "ops", Some(TOKEN));
    repo.merge_pr(&[
        ("requests/one.yaml", b"kind: echo\nparams: {message: one}\n"),
        ("requests/two.yaml", b"kind: echo\nparams: {message: two}\n"),
        (
            "requests/three.yaml",
            b"kind: echo\nparams: {message: three}\n",
        ),
    ]);
    // Fetches, claims, their releases and the results' pushes all meet the 503s: each is
    // tried again with back-off, and the pass neither stops nor strands a claim.
    sim.set_git_faults(5);
    let pass = tokio::task::block_in_place(|| repo.dispatch_url(&url, &[])).ok();
    sim.set_git_faults(0);
    let (seen, failed) = sim.git_stats();
    assert!(failed >= 3, "{failed} of {seen} git requests failed");
    assert!(pass.stderr.contains("trying again"), "{}", pass.stderr);
    for id in ["one", "two", "three"] {
        assert_eq!(pass.states()[id], "succeeded", "{}", pass.stderr);
        assert_eq!(repo.status(id)["attempt"], 1);
        let started = repo
            .log(id)
            .iter()
            .filter(|e| e["event"] == "started")
            .count();
        assert_eq!(started, 1, "{id} started once");
    }
    let claims = crate::common::sh(
        &repo.origin,
        "git",
        &["for-each-ref", "--format=%(refname)", "refs/codex/"],
    );
    assert!(claims.trim().is_empty(), "claims left: {claims}");
    eprintln!("{failed} of {seen} git requests answered 503; every result landed once");
}
