//! Crash safety: a runner killed with SIGKILL at any point of a request's life is followed by
//! one that finishes the work. No handler runs twice for an attempt that finished, every
//! result reaches main, and a handler interrupted for real follows `codex.on_interrupt`.
//!
//! The effects are counted by a [`Ledger`] the handlers call over loopback, so "exactly
//! once" is measured outside the runner.

use crate::common::{archived_path, containers_of, docker, status_path, Ledger, Repo};

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A repository with the ledger handler and `requests` (id, resource, sleep seconds) merged.
fn batch(runner: &str, ledger: &Ledger, requests: &[(&str, &str, u32)]) -> Repo {
    let mut repo = Repo::new(runner);
    repo.add_ledger_handler(ledger);
    let listed: Vec<(String, String)> = requests
        .iter()
        .map(|(id, resource, sleep)| {
            (
                id.to_string(),
                format!("{{resource: {resource}, sleep: \"{sleep}\"}}"),
            )
        })
        .collect();
    repo.merge_ledger_requests(&listed);
    repo
}

/// Run a pass armed to kill itself at `point`; assert it died by SIGKILL there.
fn crash_at(repo: &Repo, config: &str, point: &str) {
    let out = repo
        .dispatch_command(repo.origin.to_str().unwrap(), &["--config", config])
        .env("CODEX_RUNNER_CRASH_AT", point)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the pass was to die at `{point}` but ended with {:?}:\n{stderr}",
        out.status
    );
    assert!(stderr.contains(&format!("at `{point}`")), "{stderr}");
}

/// Every request ran once (attempt 1), succeeded, and its log and status are on main.
fn assert_each_once(repo: &Repo, ledger: &Ledger, ids: &[&str]) {
    for id in ids {
        assert_eq!(
            ledger.attempts(id),
            vec![1],
            "{id}'s effect exactly once: {:?}",
            ledger.hits()
        );
        let status = repo.status(id);
        assert_eq!(status["state"], "succeeded", "{id}: {status}");
        assert_eq!(status["attempt"], 1, "{id}: {status}");
        let output = repo.output(id);
        assert!(
            output.iter().any(|l| l == "recorded"),
            "{id}'s log has the handler's last line: {output:?}"
        );
        assert!(repo.main_file(&archived_path(id)).is_some());
        assert!(repo.main_file(&format!("requests/{id}.yaml")).is_none());
    }
    repo.assert_no_containers();
}

/// Kill the runner at `point` during a batch of two requests, then run a clean pass.
fn killed_at(point: &str) -> Repo {
    docker();
    let ledger = Ledger::start();
    let repo = batch(
        &format!("t-crash-{point}"),
        &ledger,
        // One resource: alpha runs first, so it is the one each point hits.
        &[("alpha", "a", 2), ("beta", "a", 0)],
    );
    let config = repo.host_network_config();
    crash_at(&repo, &config, point);
    let pass = repo.dispatch(&["--config", &config]).ok();
    assert_each_once(&repo, &ledger, &["alpha", "beta"]);
    // And nothing is left to do.
    let again = repo.dispatch(&["--config", &config]).ok();
    assert!(again.states().is_empty(), "{:?}", again.report);
    assert_each_once(&repo, &ledger, &["alpha", "beta"]);
    eprintln!("after a kill at `{point}`: {:?}", pass.states());
    repo
}

#[test]
fn killed_before_the_container_starts() {
    let repo = killed_at("before-start");
    let log = repo.log("alpha");
    assert!(
        log.iter().any(|e| e["event"] == "restarted"),
        "the journaled attempt started afresh: {log:?}"
    );
}

#[test]
fn killed_while_the_handler_runs_the_next_runner_follows_it() {
    let repo = killed_at("running");
    let log = repo.log("alpha");
    let reattached = log.iter().position(|e| e["event"] == "reattached");
    let started = log.iter().filter(|e| e["event"] == "started").count();
    assert!(reattached.is_some(), "{log:?}");
    assert_eq!(started, 1, "one container for the attempt: {log:?}");
    let output = repo.output("alpha");
    assert_eq!(
        output.iter().filter(|l| *l == "attempt 1 of alpha").count(),
        1,
        "no output line twice: {output:?}"
    );
}

#[test]
fn killed_after_the_handler_exits() {
    let repo = killed_at("after-exit");
    let log = repo.log("alpha");
    assert!(log.iter().any(|e| e["event"] == "reattached"), "{log:?}");
}

#[test]
fn killed_between_commit_and_push() {
    killed_at("before-push");
}

#[test]
fn killed_during_the_push() {
    let repo = killed_at("in-push");
    // The push landed before the kill: the results are on main once, not twice.
    let commits = crate::common::sh(
        &repo.origin,
        "git",
        &["log", "--format=%s", "main", "--", &status_path("alpha")],
    );
    assert_eq!(commits.lines().count(), 1, "{commits}");
}

#[test]
fn killed_before_the_check_update() {
    killed_at("before-check");
}

/// The container of a killed runner's attempt is gone too (the host lost it): the policy.
fn interrupted(runner: &str, policy: &str) -> (Repo, Ledger) {
    docker();
    let ledger = Ledger::start();
    let mut repo = Repo::new(runner);
    repo.add_ledger_handler(&ledger);
    let config_yaml = std::fs::read_to_string(repo.work.join("codex.repo.yaml"))
        .unwrap()
        .replace("on_interrupt: rerun", &format!("on_interrupt: {policy}"));
    repo.merge_pr(&[
        ("codex.repo.yaml", config_yaml.as_bytes()),
        (
            "requests/gamma.yaml",
            b"kind: ledger\nparams: {resource: g, sleep: \"4\"}\n",
        ),
    ]);
    let config = repo.host_network_config();
    crash_at(&repo, &config, "running");
    let left = containers_of(&repo.runner);
    assert_eq!(left.len(), 1, "the container outlived its runner: {left:?}");
    crate::common::sh(repo.tmp.path(), "docker", &["rm", "-f", &left[0]]);
    repo.dispatch(&["--config", &config]).ok();
    repo.assert_no_containers();
    (repo, ledger)
}

#[test]
fn an_interrupted_handler_runs_again_with_the_next_attempt_under_rerun() {
    let (repo, ledger) = interrupted("t-crash-rerun", "rerun");
    // Attempt 1 never reached its effect; attempt 2 did.
    assert_eq!(ledger.attempts("gamma"), vec![2], "{:?}", ledger.hits());
    let status = repo.status("gamma");
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["attempt"], 2);
    let log = repo.log("gamma");
    let interrupted = log
        .iter()
        .find(|e| e["event"] == "interrupted")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(interrupted["policy"], "rerun");
    assert_eq!(interrupted["next_attempt"], 2);
    let attempts: Vec<_> = log
        .iter()
        .filter(|e| e["event"] == "started")
        .map(|e| e["attempt"].clone())
        .collect();
    assert_eq!(attempts, [1, 2], "both attempts are in one log: {log:?}");
    let output = repo.output("gamma");
    assert!(
        output.contains(&"attempt 2 of gamma".to_string()),
        "CODEX_ATTEMPT counted up: {output:?}"
    );
}

#[test]
fn an_interrupted_handler_is_recorded_under_record() {
    let (repo, ledger) = interrupted("t-crash-record", "record");
    assert!(ledger.hits().is_empty(), "{:?}", ledger.hits());
    let status = repo.status("gamma");
    assert_eq!(status["state"], "interrupted", "{status}");
    assert_eq!(status["attempt"], 1);
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("vanished"), "{reason}");
    assert!(repo.main_file(&archived_path("gamma")).is_some());
    // Recorded means done: a later pass does not run it.
    let again = repo
        .dispatch(&["--config", &repo.host_network_config()])
        .ok();
    assert!(again.states().is_empty());
    assert!(ledger.hits().is_empty());
}

/// A tiny deterministic generator, so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn killed_over_and_over_across_a_batch_every_effect_happens_once() {
    docker();
    let ledger = Ledger::start();
    let ids: Vec<String> = (0..24).map(|i| format!("req-{i:02}")).collect();
    let requests: Vec<(String, String, u32)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("r{}", i % 3), (i % 3) as u32))
        .collect();
    let refs: Vec<(&str, &str, u32)> = requests
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), *c))
        .collect();
    let repo = batch("t-crash-storm", &ledger, &refs);
    let config = repo.host_network_config();
    let seed = 0x5eed_c0de_u64;
    let mut rng = Lcg(seed);
    let mut kills = 0;
    let mut in_a_row: u64 = 0;
    let started = Instant::now();
    // Kill passes at random moments until one gets through on its own. On a busy machine a
    // pass may outlast every window: after eight kills in a row the window grows a second per
    // kill, so the batch always moves on and the kills still land anywhere in a pass.
    loop {
        let mut child = repo
            .dispatch_command(repo.origin.to_str().unwrap(), &["--config", &config])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stretch = 1000 * in_a_row.saturating_sub(8);
        let wait = Duration::from_millis(100 + rng.below(1400 + stretch));
        let deadline = Instant::now() + wait;
        let mut done = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                done = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match done {
            Some(status) => {
                in_a_row = 0;
                let out = child.wait_with_output().unwrap();
                assert!(
                    status.success(),
                    "a pass after {kills} kills failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if repo.main_file("requests/req-23.yaml").is_none()
                    && ids
                        .iter()
                        .all(|id| repo.main_file(&status_path(id)).is_some())
                {
                    break;
                }
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                in_a_row += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress after {kills} kills (seed {seed:#x})"
        );
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_each_once(&repo, &ledger, &refs);
    assert!(
        kills >= 10,
        "the batch should have taken many kills: {kills}"
    );
    eprintln!(
        "{} requests, {kills} kills (seed {seed:#x}), {} effects",
        ids.len(),
        ledger.hits().len()
    );
}
