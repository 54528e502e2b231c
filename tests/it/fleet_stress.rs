//! The fleet under load, round after round: three one-shot runners (two of them with the same
//! name, as runners left at their default name are) race over one repository while the
//! machine is busy, over every kind of remote. Docker's own event stream is the ledger: each
//! request's container must start exactly once, every request must be on main after at most
//! one extra pass, and no claim may be left on the remote.
//!
//! `CODEX_STRESS_ROUNDS` sets the rounds per remote (default 2); `scripts/soak.sh` runs many.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::{docker, sh, GitDaemon, Pass, Repo};

/// Requests per round, each on a resource of its own.
const REQUESTS: usize = 30;

fn rounds() -> usize {
    std::env::var("CODEX_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
}

/// Container starts seen on Docker's event stream, as (request, runner), for runners whose
/// name begins with a prefix.
struct Starts {
    child: Child,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Starts {
    fn watch(prefix: &str) -> Starts {
        // From a moment ago: the engine replays what it saw since, so no start is missed
        // while the stream connects.
        let since = format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 1
        );
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &since,
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--format",
                "{{json .Actor.Attributes}}",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        let out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, prefix) = (seen.clone(), prefix.to_string());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(attrs) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let runner = attrs["io.codex-runner.runner"].as_str().unwrap_or_default();
                if runner.starts_with(&prefix) {
                    let request = attrs["io.codex-runner.request"]
                        .as_str()
                        .unwrap_or_default();
                    s.lock()
                        .unwrap()
                        .push((request.to_string(), runner.to_string()));
                }
            }
        });
        Starts { child, seen }
    }

    /// Starts so far, by request.
    fn by_request(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (request, runner) in self.seen.lock().unwrap().iter() {
            out.entry(request.clone()).or_default().push(runner.clone());
        }
        out
    }
}

impl Drop for Starts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two processes that keep both cores busy until dropped.
struct Load(Vec<Child>);

impl Load {
    fn start() -> Load {
        Load(
            (0..2)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Refs under `prefix` on the bare remote at `origin`.
fn refs(origin: &Path, prefix: &str) -> Vec<String> {
    sh(
        origin,
        "git",
        &["for-each-ref", "--format=%(refname)", prefix],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// One runner of the fleet: its name and its own state and work directories.
struct Runner {
    name: String,
    state: PathBuf,
    work: PathBuf,
}

impl Runner {
    fn pass(&self, url: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_codex-runner"));
        cmd.args(["dispatch", "--once", "--json", "--concurrency", "2"])
            .args(["--repo", url, "--runner-name", &self.name])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--work-dir")
            .arg(&self.work)
            .env("CODEX_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// What the rounds over one remote counted.
#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    requests: usize,
    starts: usize,
    stranded: usize,
}

/// `rounds()` rounds over `url`, the remote whose bare repository is `repo.origin`.
fn race(repo: &mut Repo, url: &str, prefix: &str) -> Tally {
    repo.add_handler(
        "noop",
        "#!/bin/sh\nexit 0\n",
        "    image: codex-runner/busybox:1\n    timeout: 1m\n    resource: \"{{ params.resource }}\"\n    params:\n      type: object\n      additionalProperties: false\n      required: [resource]\n      properties:\n        resource: { type: string }\n",
    );
    let runners: Vec<Runner> = ["a", "b", "a"]
        .iter()
        .enumerate()
        .map(|(i, n)| Runner {
            name: format!("{prefix}-{n}"),
            state: repo.tmp.path().join(format!("state-{i}")),
            work: repo.tmp.path().join(format!("work-{i}")),
        })
        .collect();
    let starts = Starts::watch(prefix);
    let mut tally = Tally::default();
    for round in 0..rounds() {
        let ids: Vec<String> = (0..REQUESTS)
            .map(|i| format!("{prefix}-{round:02}-{i:02}"))
            .collect();
        let files: Vec<(String, Vec<u8>)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    format!("requests/{id}.yaml"),
                    format!("kind: noop\nparams: {{resource: r{i:02}}}\n").into_bytes(),
                )
            })
            .collect();
        repo.merge_pr(&crate::common::borrowed(&files));

        let load = Load::start();
        let children: Vec<Child> = runners
            .iter()
            .map(|r| r.pass(url).spawn().expect("run codex-runner"))
            .collect();
        let passes: Vec<Pass> = children
            .into_iter()
            .map(|c| Pass::from(c.wait_with_output().unwrap()))
            .collect();
        drop(load);
        for (r, p) in runners.iter().zip(&passes) {
            assert_eq!(
                p.code, 0,
                "round {round}: runner {} failed:\n{}",
                r.name, p.stderr
            );
        }
        // One extra pass records whatever the race left; nothing may need more.
        let extra = Pass::from(runners[0].pass(url).output().unwrap());
        assert_eq!(
            extra.code, 0,
            "round {round}: extra pass:\n{}",
            extra.stderr
        );

        for id in &ids {
            let status = repo.status(id);
            assert_eq!(
                status["state"], "succeeded",
                "round {round}: {id}: {status}"
            );
        }
        let stranded = refs(&repo.origin, "refs/codex/");
        let scratch = refs(&repo.origin, "refs/codex-scratch/");
        tally.stranded += stranded.len() + scratch.len();
        assert!(
            stranded.is_empty() && scratch.is_empty(),
            "round {round}: refs left on the remote: {stranded:?} {scratch:?}"
        );
        // The stream may lag the engine a little: every request has started by now.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ids.iter().any(|id| !starts.by_request().contains_key(id)) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: Docker's event stream lacks some starts: {:?}",
                starts.by_request()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let seen = starts.by_request();
        for id in &ids {
            assert_eq!(
                seen[id].len(),
                1,
                "round {round}: {id}'s container started more than once, by {:?}",
                seen[id]
            );
        }
        tally.rounds += 1;
        tally.requests += ids.len();
        tally.starts += ids.iter().map(|id| seen[id].len()).sum::<usize>();
    }
    tally
}

#[test]
fn a_fleet_over_a_path_remote_starts_each_request_once() {
    docker();
    let mut repo = Repo::new("st-path");
    let url = repo.origin.to_string_lossy().into_owned();
    let tally = race(&mut repo, &url, "st-path");
    eprintln!("path remote: {tally:?}");
}

#[test]
fn a_fleet_over_git_daemon_starts_each_request_once() {
    docker();
    let mut repo = Repo::new("st-git");
    let daemon = GitDaemon::start(repo.tmp.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let tally = race(&mut repo, &url, "st-git");
    eprintln!("git:// remote: {tally:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_over_smart_http_starts_each_request_once() {
    docker();
    let token = "ghp_stress";
    let (sim, mut repo) =
        crate::common::on_forge("st-http", vec![forge_sim::Token::full(token)]).await;
    let url = sim.git_url("acme", "ops", Some(token));
    let tally = tokio::task::block_in_place(|| race(&mut repo, &url, "st-http"));
    eprintln!("smart HTTP remote: {tally:?}");
}
