//! SIGTERM and SIGINT: a runner drains (nothing new starts, running handlers finish), cancels
//! what still runs after the drain timeout or a second signal, and pushes every result.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{containers_of, docker, Pass, Repo};

/// Start `dispatch --once` for `repo` in the background.
fn spawn_pass(repo: &Repo, extra: &[&str]) -> Child {
    repo.dispatch_command(repo.origin.to_str().unwrap(), extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until the runner has a container, i.e. a handler is running.
fn wait_for_container(repo: &Repo, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers_of(&repo.runner).is_empty() {
        assert!(Instant::now() < deadline, "no container started");
        assert!(child.try_wait().unwrap().is_none(), "the pass ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn finish(child: Child) -> (Pass, Duration) {
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    (Pass::from(out), started.elapsed())
}

#[test]
fn sigterm_lets_the_running_handler_finish_and_starts_nothing_new() {
    docker();
    let mut repo = Repo::new("t-drain");
    repo.merge_pr(&[
        (
            "requests/first.yaml",
            b"kind: echo\nresource: shared\nparams: {message: first, sleep: 3}\n",
        ),
        (
            "requests/second.yaml",
            b"kind: echo\nresource: shared\nparams: {message: second}\n",
        ),
    ]);
    let mut child = spawn_pass(&repo, &[]);
    wait_for_container(&repo, &mut child);
    signal(&child, libc::SIGTERM);
    let (pass, _) = finish(child);
    let pass = pass.ok();
    assert_eq!(
        pass.states().into_iter().collect::<Vec<_>>(),
        [("first".to_string(), "succeeded".to_string())],
        "the running handler finished; the next one did not start:\n{}",
        pass.stderr
    );
    assert!(
        pass.stderr.contains("left for a later pass"),
        "{}",
        pass.stderr
    );
    assert_eq!(repo.status("first")["state"], "succeeded");
    assert!(
        repo.main_file("requests/second.yaml").is_some(),
        "second waits in the inbox"
    );
    assert!(repo.main_file("logs/second.status.json").is_none());
    repo.assert_no_containers();

    // The next pass runs what the stopping one left.
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(
        pass.states().get("second").map(String::as_str),
        Some("succeeded")
    );
}

/// A runner with a 1 s grace period (SIGTERM to SIGKILL), so cancellations are quick.
fn quick_grace(repo: &Repo) -> String {
    let path = repo.tmp.path().join("runner.toml");
    std::fs::write(&path, "[limits]\ngrace = \"1s\"\n").unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn after_the_drain_timeout_the_running_handler_is_cancelled_and_recorded() {
    docker();
    let mut repo = Repo::new("t-cancel");
    repo.merge_pr(&[(
        "requests/long.yaml",
        b"kind: echo\nparams: {message: long, sleep: 120}\n",
    )]);
    let config = quick_grace(&repo);
    let mut child = spawn_pass(&repo, &["--config", &config, "--drain-timeout", "1s"]);
    wait_for_container(&repo, &mut child);
    signal(&child, libc::SIGTERM);
    let (pass, took) = finish(child);
    let pass = pass.ok();
    assert!(
        took < Duration::from_secs(60),
        "cancelled, not waited out: {took:?}"
    );
    assert_eq!(
        pass.states().get("long").map(String::as_str),
        Some("cancelled")
    );
    let status = repo.status("long");
    assert_eq!(status["state"], "cancelled", "{status}");
    assert!(status["reason"]
        .as_str()
        .unwrap()
        .contains("runner was stopping"));
    assert!(
        repo.main_file("processed/long.yaml").is_some(),
        "recorded and moved"
    );
    let log = repo.log("long");
    assert_eq!(log.last().unwrap()["event"], "finished");
    repo.assert_no_containers();
}

#[test]
fn a_second_signal_cancels_at_once() {
    docker();
    let mut repo = Repo::new("t-twice");
    repo.merge_pr(&[(
        "requests/long.yaml",
        b"kind: echo\nparams: {message: long, sleep: 120}\n",
    )]);
    let config = quick_grace(&repo);
    let mut child = spawn_pass(&repo, &["--config", &config, "--drain-timeout", "10m"]);
    wait_for_container(&repo, &mut child);
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    signal(&child, libc::SIGINT);
    let (pass, took) = finish(child);
    let pass = pass.ok();
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(repo.status("long")["state"], "cancelled");
    assert_eq!(
        pass.states().get("long").map(String::as_str),
        Some("cancelled")
    );
    repo.assert_no_containers();
}

#[test]
fn the_daemon_drains_on_sigterm_and_exits_with_the_result_pushed() {
    docker();
    let mut repo = Repo::new("t-daemon-drain");
    repo.merge_pr(&[(
        "requests/slow.yaml",
        b"kind: echo\nparams: {message: slow, sleep: 3}\n",
    )]);
    let config = repo.tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nname = \"{}\"\nstate_dir = \"{}\"\n\n[repository]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\npoll_interval = \"1h\"\n",
            repo.runner,
            repo.state.display(),
            repo.origin.display()
        ),
    )
    .unwrap();
    let mut daemon = common::spawn_daemon(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers_of(&repo.runner).is_empty() {
        assert!(Instant::now() < deadline, "no container started");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&daemon.child, libc::SIGTERM);
    let exit = daemon.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        repo.status("slow")["state"],
        "succeeded",
        "finished, then pushed"
    );
    repo.assert_no_containers();
}
