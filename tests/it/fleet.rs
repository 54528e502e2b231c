//! A fleet: several runners (processes here, hosts in production) watch one repository and
//! share nothing but its git remote. Each request runs exactly once, counted by a ledger the
//! handlers call; a claim whose runner died is taken over after `claim_timeout`.

use crate::common::{archived_path, docker, spawn_daemon, Daemon, Ledger, Repo};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A daemon named `name` on `repo`, with its own state and work directories, polling often.
fn runner(repo: &Repo, name: &str) -> Daemon {
    let dir = repo.tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nname = \"{name}\"\nstate_dir = \"{}\"\nconcurrency = 2\n\n[limits]\nallow_network_host = true\ngrace = \"1s\"\n\n[repository]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\npoll_interval = \"1s\"\n",
            dir.join("state").display(),
            repo.origin.display()
        ),
    )
    .unwrap();
    spawn_daemon(&config)
}

/// The status files on main, by request id.
fn statuses(repo: &Repo) -> BTreeMap<String, serde_json::Value> {
    let listing = crate::common::sh(
        &repo.origin,
        "git",
        &["ls-tree", "-r", "--name-only", "main", "logs/"],
    );
    listing
        .lines()
        .filter_map(|p| p.rsplit('/').next()?.strip_suffix(".status.json"))
        .map(|id| (id.to_string(), repo.status(id)))
        .collect()
}

/// Claim refs left on the remote.
fn claims_on_remote(repo: &Repo) -> Vec<String> {
    crate::common::sh(
        &repo.origin,
        "git",
        &["for-each-ref", "--format=%(refname)", "refs/codex/"],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn three_runners_share_300_requests_and_each_runs_exactly_once() {
    docker();
    let ledger = Ledger::start();
    let mut repo = Repo::new("t-fleet");
    repo.add_ledger_handler(&ledger);
    let ids: Vec<String> = (0..300).map(|i| format!("req-{i:03}")).collect();
    let listed: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("{{resource: r{:02}}}", i % 30)))
        .collect();
    repo.merge_ledger_requests(&listed);

    let started = Instant::now();
    let daemons: Vec<Daemon> = ["t-fleet-a", "t-fleet-b", "t-fleet-c"]
        .iter()
        .map(|name| runner(&repo, name))
        .collect();
    let mut done = statuses(&repo);
    while done.len() < ids.len() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {} recorded after 10 minutes",
            done.len(),
            ids.len()
        );
        std::thread::sleep(Duration::from_secs(2));
        done = statuses(&repo);
    }
    let elapsed = started.elapsed();

    let mut by_runner: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        assert_eq!(
            ledger.attempts(id),
            vec![1],
            "{id}'s effect exactly once: {:?}",
            ledger.attempts(id)
        );
        let status = &done[id];
        assert_eq!(status["state"], "succeeded", "{id}: {status}");
        assert!(repo.main_file(&archived_path(id)).is_some());
        *by_runner
            .entry(status["runner"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        ledger.hits().len(),
        ids.len(),
        "no effect beyond one per request"
    );
    assert_eq!(
        by_runner.len(),
        3,
        "all three runners took work: {by_runner:?}"
    );
    assert!(
        repo.main_file("requests/req-299.yaml").is_none(),
        "the inbox is empty"
    );
    // Claims are dropped once their results are on main (a later pass sweeps stragglers).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !claims_on_remote(&repo).is_empty() {
        assert!(
            Instant::now() < deadline,
            "claims left: {:?}",
            claims_on_remote(&repo)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(daemons);
    eprintln!(
        "300 requests, 3 runners, {:.1}s, by runner: {by_runner:?}, {} main commits",
        elapsed.as_secs_f64(),
        repo.main_commits()
    );
}

#[test]
fn a_claim_whose_runner_died_is_taken_over_after_the_timeout() {
    docker();
    let ledger = Ledger::start();
    let mut repo = Repo::new("t-fleet-dead");
    repo.add_ledger_handler(&ledger);
    let contract = std::fs::read_to_string(repo.work.join("codex.repo.yaml"))
        .unwrap()
        .replace("claim_timeout: 10m", "claim_timeout: 3s");
    repo.merge_pr(&[
        ("codex.repo.yaml", contract.as_bytes()),
        (
            "requests/delta.yaml",
            b"kind: ledger\nparams: {resource: d, sleep: \"4\"}\n",
        ),
    ]);
    let config = repo.host_network_config();

    // Runner A claims `delta` and dies while it runs; its host goes with its container.
    die_while_running(&repo, &config);
    assert_eq!(
        claims_on_remote(&repo).len(),
        1,
        "A's claim is on the remote"
    );

    // Runner B, at once: the claim is fresh, so B leaves the request to A.
    let b_state = repo.tmp.path().join("b-state");
    let b = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.as_str(),
            "--state-dir",
            b_state.to_str().unwrap(),
            "--runner-name",
            "t-fleet-b",
        ];
        args.extend_from_slice(extra);
        crate::common::Pass::from(
            std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"))
                .args(["dispatch", "--once", "--json", "--repo"])
                .arg(&repo.origin)
                .args(&args)
                .env("CODEX_LOG", "info")
                .output()
                .unwrap(),
        )
    };
    let first = b(&[]).ok();
    assert!(first.states().is_empty(), "{:?}", first.report);
    let deferred = &first.report["deferred"];
    assert_eq!(deferred[0]["id"], "delta", "{}", first.report);
    assert!(
        deferred[0]["holder"]
            .as_str()
            .unwrap_or_default()
            .contains("t-fleet-dead"),
        "{deferred}"
    );
    assert!(ledger.hits().is_empty());

    // Once the claim is older than claim_timeout, B takes it over: attempt 2 (on_interrupt: rerun).
    std::thread::sleep(Duration::from_millis(3500));
    let second = b(&[]).ok();
    assert_eq!(
        second.states().get("delta").map(String::as_str),
        Some("succeeded"),
        "{}",
        second.stderr
    );
    assert_eq!(ledger.attempts("delta"), vec![2], "{:?}", ledger.hits());
    let status = repo.status("delta");
    assert_eq!(
        (status["attempt"].as_u64(), status["runner"].as_str()),
        (Some(2), Some("t-fleet-b"))
    );
    let log = repo.log("delta");
    let interrupted = log
        .iter()
        .find(|e| e["event"] == "interrupted")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(
        interrupted["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped renewing its claim"),
        "{interrupted}"
    );
    assert!(claims_on_remote(&repo).is_empty());

    // A comes back: the request is recorded, so its unfinished attempt is dropped, not rerun.
    let back = repo.dispatch(&["--config", &config]).ok();
    assert!(back.states().is_empty(), "{:?}", back.report);
    assert_eq!(ledger.hits().len(), 1);
    repo.assert_no_containers();
}

/// A pass of the repository's runner that dies while its handler runs, and whose host goes
/// with its container.
fn die_while_running(repo: &Repo, config: &str) {
    let out = repo
        .dispatch_command(repo.origin.to_str().unwrap(), &["--config", config])
        .env("CODEX_RUNNER_CRASH_AT", "running")
        .output()
        .unwrap();
    assert!(!out.status.success());
    for c in crate::common::containers_of(&repo.runner) {
        crate::common::sh(repo.tmp.path(), "docker", &["rm", "-f", &c]);
    }
}

/// Where a runner with state directory `state` keeps the results of the remote `origin`.
fn results_dir(state: &std::path::Path, origin: &std::path::Path) -> std::path::PathBuf {
    let remote = origin.to_string_lossy();
    let hash = remote.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let tail = remote.trim_end_matches('/').trim_end_matches(".git");
    let tail = tail.rsplit('/').next().unwrap();
    state.join("results").join(format!("{tail}-{hash:016x}"))
}

/// A `dispatch --once --json` by runner `name` with state directory `state` on `repo`.
fn pass_as(repo: &Repo, name: &str, state: &std::path::Path, config: &str) -> crate::common::Pass {
    crate::common::Pass::from(
        std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"))
            .args(["dispatch", "--once", "--json", "--repo"])
            .arg(&repo.origin)
            .args(["--config", config, "--runner-name", name, "--state-dir"])
            .arg(state)
            .env("CODEX_LOG", "info")
            .output()
            .unwrap(),
    )
}

#[test]
fn a_runner_that_fails_before_the_container_starts_frees_its_claim_at_once() {
    docker();
    let ledger = Ledger::start();
    let mut repo = Repo::new("t-fleet-free");
    repo.add_ledger_handler(&ledger);
    repo.merge_pr(&[(
        "requests/echo-1.yaml",
        b"kind: ledger\nparams: {resource: e}\n",
    )]);
    let config = repo.host_network_config();
    // Runner A wins the claim, then fails before the container starts: where the request's
    // result directory goes, its state directory holds a file it cannot clear.
    let a_state = repo.tmp.path().join("a");
    let results = results_dir(&a_state, &repo.origin);
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("echo-1"), b"in the way").unwrap();
    let a = pass_as(&repo, "t-fleet-free-a", &a_state, &config);
    assert_eq!(
        a.code, 1,
        "a state directory failure: {}\n{}",
        a.report, a.stderr
    );
    assert!(a.stderr.contains("echo-1"), "{}", a.stderr);
    assert!(ledger.hits().is_empty());
    let claim = claims_on_remote(&repo);
    assert_eq!(claim.len(), 1, "the claim stays, released: {claim:?}");
    let body = crate::common::sh(
        &repo.origin,
        "git",
        &["log", "-1", "--format=%B", &claim[0]],
    );
    assert!(body.contains("\"released\":true"), "{body}");

    // B does not wait out the 10-minute claim timeout: it runs the request now, as attempt 1.
    let b = pass_as(&repo, "t-fleet-free-b", &repo.tmp.path().join("b"), &config).ok();
    assert_eq!(b.states()["echo-1"], "succeeded", "{}", b.stderr);
    assert_eq!(ledger.attempts("echo-1"), vec![1]);
    assert!(claims_on_remote(&repo).is_empty());
}

#[test]
fn a_dead_process_of_the_same_runner_name_is_taken_over_at_once() {
    docker();
    let ledger = Ledger::start();
    let mut repo = Repo::new("t-fleet-same");
    repo.add_ledger_handler(&ledger);
    repo.merge_pr(&[(
        "requests/solo.yaml",
        b"kind: ledger\nparams: {resource: s, sleep: \"3\"}\n",
    )]);
    let config = repo.host_network_config();
    // A process of runner `t-fleet-same` dies while the handler runs; its host goes with its
    // container. The claim (timeout 10m) names a process that is gone.
    die_while_running(&repo, &config);
    assert_eq!(claims_on_remote(&repo).len(), 1);

    // Another process of the same name, with a state directory of its own (no journal of
    // that attempt), takes it over at once: the dead attempt counts as interrupted.
    let other = pass_as(&repo, &repo.runner, &repo.tmp.path().join("other"), &config).ok();
    assert_eq!(other.states()["solo"], "succeeded", "{}", other.stderr);
    assert_eq!(ledger.attempts("solo"), vec![2], "{:?}", ledger.hits());
    let log = repo.log("solo");
    assert!(
        log.iter().any(|e| e["event"] == "interrupted"),
        "the log says attempt 1 was interrupted: {log:?}"
    );
    assert!(claims_on_remote(&repo).is_empty());
    repo.assert_no_containers();
}

/// Put a live claim of another runner on request `id` of `repo`'s main.
fn claim_as_another_runner(repo: &Repo, id: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    crate::common::put_claim(
        &repo.origin,
        id,
        &format!(
            r#"{{"runner":"elsewhere","host":"another-host","attempt":1,"renewed_ms":{now},"nonce":"n"}}"#
        ),
    );
}

#[test]
fn a_queue_held_in_the_middle_runs_up_to_there_and_gives_the_rest_back_at_once() {
    docker();
    let ledger = Ledger::start();
    let mut repo = Repo::new("t-fleet-queue");
    repo.add_ledger_handler(&ledger);
    repo.merge_ledger_requests(&[
        ("q-1".into(), "{resource: q}".into()),
        ("q-2".into(), "{resource: q}".into()),
        ("q-3".into(), "{resource: q}".into()),
    ]);
    claim_as_another_runner(&repo, "q-2");
    let config = repo.host_network_config();

    // The queue's three claims go in one push: q-1 and q-3 are won, q-2 is held. q-1 runs;
    // q-3 must wait for q-2, so its claim is given back, marked released, not left to time out.
    let a = pass_as(
        &repo,
        "t-fleet-queue-a",
        &repo.tmp.path().join("a"),
        &config,
    )
    .ok();
    assert_eq!(a.states()["q-1"], "succeeded", "{}", a.stderr);
    assert_eq!(ledger.attempts("q-1"), vec![1]);
    assert!(ledger.attempts("q-2").is_empty() && ledger.attempts("q-3").is_empty());
    let deferred: Vec<&str> = a.report["deferred"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(deferred, ["q-2"], "{}", a.report);
    let mut left = claims_on_remote(&repo);
    left.sort();
    assert_eq!(
        left,
        ["refs/codex/claims/main/q-2", "refs/codex/claims/main/q-3"],
        "q-1's claim went with its result"
    );
    let q3 = crate::common::sh(
        &repo.origin,
        "git",
        &["log", "-1", "--format=%B", "refs/codex/claims/main/q-3"],
    );
    assert!(q3.contains("\"released\":true"), "{q3}");

    // The other runner finishes q-2 elsewhere (here: its claim goes). The next runner takes
    // q-2 and q-3 at once, in order, without waiting out a claim timeout.
    crate::common::sh(
        &repo.origin,
        "git",
        &["update-ref", "-d", "refs/codex/claims/main/q-2"],
    );
    let b = pass_as(
        &repo,
        "t-fleet-queue-b",
        &repo.tmp.path().join("b"),
        &config,
    )
    .ok();
    assert_eq!(b.states()["q-2"], "succeeded", "{}", b.stderr);
    assert_eq!(b.states()["q-3"], "succeeded", "{}", b.stderr);
    let order: Vec<String> = ledger.hits().into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, ["q-1", "q-2", "q-3"]);
    assert!(claims_on_remote(&repo).is_empty());
}
