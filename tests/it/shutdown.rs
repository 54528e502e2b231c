//! SIGTERM and SIGINT: a runner drains (nothing new starts, running handlers finish), cancels
//! what still runs after the drain timeout or a second signal, and pushes every result.

use crate::common::{archived_path, containers_of, docker, status_path, Pass, Repo};

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Start `dispatch --once` for `repo` in the background.
pub(crate) fn spawn_pass(repo: &Repo, extra: &[&str]) -> Child {
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

pub(crate) fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

pub(crate) fn finish(child: Child) -> (Pass, Duration) {
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
    assert!(repo.main_file(&status_path("second")).is_none());
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
        repo.main_file(&archived_path("long")).is_some(),
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
    let config = repo.daemon_config("daemon.toml", "1h");
    let mut daemon = crate::common::spawn_daemon(&config);
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
    let claims = crate::common::sh(
        &repo.origin,
        "git",
        &["for-each-ref", "--format=%(refname)", "refs/codex/"],
    );
    assert_eq!(
        claims.trim(),
        "",
        "the daemon dropped its claims as it stopped"
    );
    repo.assert_no_containers();
}

#[test]
fn containers_left_by_a_dead_runner_are_removed_at_the_next_pass() {
    docker();
    let repo = Repo::new("t-orphans");
    let grace = quick_grace(&repo);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    // What a runner killed with SIGKILL leaves: a running container owned by a dead pid.
    // Another runner's container and a container owned by a live runner process stay.
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    // A live codex-runner process (a daemon of another runner name, idle).
    let config = repo.tmp.path().join("helper.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nname = \"t-orphans-helper\"\nstate_dir = \"{}\"\n\n[repository]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\npoll_interval = \"1h\"\n",
            repo.tmp.path().join("helper-state").display(),
            repo.origin.display()
        ),
    )
    .unwrap();
    let live = crate::common::spawn_daemon(&config);
    let start = |name: &str, runner: &str, owner: String| {
        crate::common::sh(
            repo.tmp.path(),
            "docker",
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                "--label",
                "io.codex-runner.managed=true",
                "--label",
                &format!("io.codex-runner.runner={runner}"),
                "--label",
                &format!("io.codex-runner.owner={owner}"),
                "codex-runner/busybox:1",
                "sleep",
                "300",
            ],
        );
    };
    let suffix = std::process::id();
    let orphan = format!("codex-t-orphans-left-{suffix}");
    let sibling = format!("codex-t-orphans-live-{suffix}");
    let other = format!("codex-other-runner-{suffix}");
    start(&orphan, "t-orphans", format!("{}/{dead}", boot.trim()));
    start(
        &sibling,
        "t-orphans",
        format!("{}/{}", boot.trim(), live.child.id()),
    );
    start(&other, "someone-else", format!("{}/{dead}", boot.trim()));

    let pass = repo.dispatch(&["--config", &grace]).ok();
    assert!(
        pass.stderr.contains("left by a dead runner"),
        "{}",
        pass.stderr
    );
    let ours = containers_of("t-orphans");
    assert!(!ours.contains(&orphan), "the orphan is gone: {ours:?}");
    assert!(
        ours.contains(&sibling),
        "a live runner's container stays: {ours:?}"
    );
    // Once that runner is gone, its container is the next pass's to remove.
    drop(live);
    assert!(
        containers_of("someone-else").contains(&other),
        "another runner's stays"
    );
    repo.dispatch(&["--config", &grace]).ok();
    assert!(containers_of("t-orphans").is_empty());
    crate::common::sh(repo.tmp.path(), "docker", &["rm", "-f", &other]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_daemon_is_ready_after_its_first_pass_feeds_its_watchdog_and_extends_its_stop(
) {
    docker();
    let repo = Repo::new("t-notify");
    let config = repo.daemon_config("runner.toml", "1h");
    // The socket systemd would listen on for a Type=notify unit with WatchdogSec=1.
    let path = repo.tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let next = || {
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 60 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut daemon = crate::common::spawn_daemon_env(
        &config,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut seen = Vec::new();
    let ready = loop {
        let m = next();
        seen.push(m.clone());
        if m.lines().any(|l| l == "READY=1") {
            break m;
        }
    };
    assert!(
        ready.contains("STATUS=waiting; the last pass"),
        "READY comes with what the first pass did: {ready:?}"
    );
    assert!(
        seen.iter().any(|m| m.contains("STATUS=a pass is running")),
        "{seen:?}"
    );
    // Fed at half the watchdog's second, whether or not a pass runs.
    let fed = (0..6)
        .map(|_| next())
        .filter(|m| m == "WATCHDOG=1\n")
        .count();
    assert!(
        fed >= 4,
        "{fed} of the next 6 notifications fed the watchdog"
    );

    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = loop {
        let m = next();
        if m.lines().any(|l| l == "STOPPING=1") {
            break m;
        }
    };
    assert!(
        stopping.contains("EXTEND_TIMEOUT_USEC=30000000")
            && stopping.contains("STATUS=stopping: 0 request(s) running, none starting"),
        "{stopping:?}"
    );
    let exited = daemon.child.wait().unwrap();
    assert!(exited.success(), "{exited:?}");
}
