//! The Docker engine dies in the middle of a handler. A second engine of its own runs this
//! test (its own socket, data and exec roots), so the shared one the other tests use is never
//! stopped: the runner reports a clear error, nothing is marked done, and once the engine is
//! back the request is run again under the interruption policy with nothing lost.

use crate::common::{docker, log_path, status_path, Repo};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A dockerd of this test's own.
struct Engine {
    dir: PathBuf,
    child: Option<Child>,
}

impl Engine {
    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(["-H", &self.host()])
            .args(args)
            .output()
            .expect("docker CLI")
    }

    fn start(dir: &Path) -> Engine {
        let mut e = Engine {
            dir: dir.to_path_buf(),
            child: None,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let d = &self.dir;
        std::fs::create_dir_all(d.join("data")).unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let arg = |name: &str, p: &str| format!("--{name}={}", d.join(p).display());
        let child = Command::new("dockerd")
            .arg(format!("--host={}", self.host()))
            .arg(arg("data-root", "data"))
            .arg(arg("exec-root", "exec"))
            .arg(arg("pidfile", "docker.pid"))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("dockerd (docker.io) is installed");
        self.child = Some(child);
        let since = Instant::now();
        while !self.docker(&["version"]).status.success() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "the second dockerd did not answer ({:?}, containerd.pid {:?}): {}",
                std::fs::read_dir(d.join("exec/containerd"))
                    .map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
                std::fs::read_to_string(d.join("exec/containerd/containerd.pid")),
                std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The engine dies at once, as in a crash: SIGKILL to dockerd and its containerd (the
    /// containers' shims live on, as they do when a real engine crashes).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let config = self.dir.join("exec/containerd/containerd.toml");
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &config.display().to_string()])
            .status();
        let since = Instant::now();
        while Command::new("pgrep")
            .args(["-f", &config.display().to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "containerd lives on"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Where PID 1 does not reap orphans (a container running these tests), the dead
        // containerd stays a zombie whose pid still answers: the restarted dockerd would wait
        // on it instead of starting a new one.
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.kill();
        // The engine's containerd and shims outlive a SIGKILL of dockerd.
        let _ = Command::new("pkill")
            .args(["-f", &self.dir.join("exec").display().to_string()])
            .status();
        // dockerd mounts its data root over itself; killed, it leaves the mount behind, and
        // the temporary directory could not be removed (they piled up in /tmp).
        for sub in ["data", "exec"] {
            let _ = Command::new("umount")
                .args(["--recursive", "--lazy"])
                .arg(self.dir.join(sub))
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn a_docker_engine_dying_mid_handler_loses_nothing_and_the_request_runs_again() {
    docker();
    let tmp = tempfile::tempdir().unwrap();
    let mut engine = Engine::start(&tmp.path().join("engine"));
    // The busybox image, copied from the shared engine (no registry involved).
    let saved = tmp.path().join("busybox.tar");
    let out = Command::new("docker")
        .args([
            "save",
            "-o",
            saved.to_str().unwrap(),
            "codex-runner/busybox:1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = engine.docker(&["load", "-i", saved.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut repo = Repo::new("t-engine-lost");
    repo.add_handler(
        "slow",
        "#!/bin/sh\necho \"attempt $CODEX_ATTEMPT begins\"\nsleep 4\necho \"attempt $CODEX_ATTEMPT ends\"\n",
        "    image: codex-runner/busybox:1\n    timeout: 1m\n",
    );
    repo.merge_pr(&[("requests/slow-1.yaml", b"kind: slow\n")]);

    // The pass starts the handler; the engine dies while it sleeps.
    let host = engine.host();
    let pass = repo
        .dispatch_command(repo.origin.to_str().unwrap(), &[])
        .env("DOCKER_HOST", &host)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let since = Instant::now();
    loop {
        let ps = engine.docker(&["ps", "--format", "{{.Names}}"]);
        if String::from_utf8_lossy(&ps.stdout).contains("slow-1") {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the handler never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    engine.kill();
    let first = crate::common::Pass::from(pass.wait_with_output().unwrap());
    assert_eq!(
        first.code, 5,
        "exit code 5 says Docker failed:\n{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("the executor failed") && first.stderr.contains("slow-1"),
        "a clear error naming the request:\n{}",
        first.stderr
    );
    // Nothing is marked done: no log on main, the request still in the inbox.
    assert!(repo.main_file(&log_path("slow-1")).is_none());
    assert!(repo.main_file(&status_path("slow-1")).is_none());
    assert!(repo.main_file("requests/slow-1.yaml").is_some());

    // While the engine is down, a pass says so and changes nothing.
    let down = repo.dispatch_env(&[], &[("DOCKER_HOST", host.as_str())]);
    assert_eq!(down.code, 5, "{}", down.stderr);
    assert!(repo.main_file(&log_path("slow-1")).is_none());

    // The engine is back: the request runs again as attempt 2 (on_interrupt: rerun), and the
    // one log holds both attempts.
    engine.spawn();
    let pass = repo
        .dispatch_env(&[], &[("DOCKER_HOST", host.as_str())])
        .ok();
    assert_eq!(pass.states()["slow-1"], "succeeded", "{}", pass.stderr);
    let status = repo.status("slow-1");
    assert_eq!(status["attempt"], 2, "{status}");
    let log = repo.log("slow-1");
    let interrupted = log
        .iter()
        .find(|e| e["event"] == "interrupted")
        .unwrap_or_else(|| panic!("no interrupted event: {log:#?}"));
    assert_eq!(interrupted["policy"], "rerun");
    let reason = interrupted["reason"].as_str().unwrap();
    assert!(reason.contains("attempt 1"), "{reason}");
    let output = repo.output("slow-1");
    assert!(
        output.contains(&"attempt 1 begins".to_string()),
        "{output:?}"
    );
    assert!(output.contains(&"attempt 2 ends".to_string()), "{output:?}");
    let left = engine.docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=io.codex-runner.managed=true",
    ]);
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "no container left on the engine"
    );
    println!("engine lost mid-handler: pass exit 5, nothing recorded; after restart: attempt 2 succeeded ({reason})");
}
