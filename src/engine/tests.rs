//! The engine in-process, on the in-memory executor: whole passes against a real bare git
//! repository, with no Docker. The lifecycle, the queues, drain and crash recovery are
//! decided here exactly as with Docker; the Docker-backed suite (`tests/it`) checks the rest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::HostLimits;
use crate::contract::repo_config::RepoConfig;
use crate::exec::fake::{FakeExecutor, Script, Seen};
use crate::exec::{ExecutorChoice, Fate};
use crate::git::seed::{SeedFile, SeedRepo};
use crate::git::Identity;
use crate::record::{Ledger, ResultFile, State, Status};

use super::journal::{self, AttemptRecord, Phase};
use super::shutdown::{Shutdown, Stage};
use super::{dispatch_once, remote_key, DispatchError, DispatchOptions, PassReport};

const INDEX: &str = "handlers:
  echo:
    description: print a message
    run: handlers/echo.sh
    image: fake/busybox:1
    timeout: 2m
    params:
      type: object
      required: [message]
      properties:
        message: { type: string }
";

/// A bare remote with the handlers, then the requests merged on top, and a runner's options
/// pointing at it with the fake executor.
struct Fixture {
    tmp: tempfile::TempDir,
    fake: Arc<FakeExecutor>,
    shutdown: Shutdown,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Fixture {
    fn new(requests: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let origin = SeedRepo::init_bare(&tmp.path().join("origin.git")).unwrap();
        let base = origin
            .commit(
                "refs/heads/main",
                &[],
                &[
                    SeedFile {
                        path: "handlers/index.yml",
                        bytes: INDEX.as_bytes(),
                        executable: false,
                    },
                    SeedFile {
                        path: "handlers/echo.sh",
                        bytes: b"#!/bin/sh\necho hi\n",
                        executable: true,
                    },
                ],
                "handlers",
            )
            .unwrap();
        let files: Vec<(String, &str)> = requests
            .iter()
            .map(|(id, body)| (format!("requests/{id}.yaml"), *body))
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, b)| (p.as_str(), *b)).collect();
        origin
            .commit(
                "refs/heads/main",
                &[base],
                &SeedFile::texts(&files),
                "requests",
            )
            .unwrap();
        Fixture {
            tmp,
            fake: Arc::new(FakeExecutor::default()),
            shutdown: Shutdown::default(),
            metrics: Arc::default(),
        }
    }

    fn origin(&self) -> PathBuf {
        self.tmp.path().join("origin.git")
    }

    fn options(&self) -> DispatchOptions {
        DispatchOptions {
            remote: self.origin().to_string_lossy().into_owned(),
            branch: None,
            work_dir: self.tmp.path().join("work"),
            state_dir: self.tmp.path().join("state"),
            runner: "fake-runner".into(),
            concurrency: 2,
            identity: Identity {
                name: "codex-runner".into(),
                email: "codex-runner@localhost".into(),
            },
            limits: HostLimits::default(),
            secrets: Default::default(),
            push_attempts: 3,
            forge: None,
            git_auth: None,
            labels: Vec::new(),
            shutdown: self.shutdown.clone(),
            drain_timeout: Duration::from_secs(1),
            keep_recorded_claims: false,
            executor: ExecutorChoice::Given(self.fake.clone()),
            metrics: self.metrics.clone(),
        }
    }

    async fn pass(&self) -> Result<PassReport, DispatchError> {
        dispatch_once(&self.options()).await
    }

    /// Request `id`'s status as published on the remote's main.
    fn published(&self, id: &str) -> Option<Status> {
        let origin = SeedRepo::open(&self.origin()).unwrap();
        Ledger::of(&RepoConfig::default())
            .lookups(ResultFile::Status, id)
            .iter()
            .find_map(|p| origin.read_main(p).unwrap())
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    /// Request `id`'s published log, one JSON value per line.
    fn log(&self, id: &str) -> Vec<serde_json::Value> {
        let origin = SeedRepo::open(&self.origin()).unwrap();
        let path = Ledger::of(&RepoConfig::default()).path(ResultFile::Log, id);
        let bytes = origin.read_main(&path).unwrap().unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Where a request's unpublished result lives in the state directory.
    fn result_dir(&self, id: &str) -> PathBuf {
        let opts = self.options();
        opts.state_dir
            .join("results")
            .join(remote_key(&opts.remote))
            .join(id)
    }

    /// Leave a journal as a runner process that died while `id` ran would have.
    fn journal(&self, id: &str, phase: Phase) -> String {
        let dir = self.result_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let container = format!("codex-fake-runner-{id}-1");
        let record = AttemptRecord {
            attempt: 1,
            container: container.clone(),
            phase,
            started_at: Some(crate::record::now()),
            started_ms: crate::record::unix_ms(),
            image: "fake/busybox:1".into(),
        };
        journal::write(&crate::record::ResultDir::at(dir), &record).unwrap();
        container
    }
}

fn events(log: &[serde_json::Value]) -> Vec<&str> {
    log.iter().map(|e| e["event"].as_str().unwrap()).collect()
}

fn position(seen: &[Seen], wanted: &Seen) -> usize {
    seen.iter()
        .position(|s| s == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {seen:?}"))
}

fn started(id: &str) -> Seen {
    Seen::Started(id.into())
}

fn ended(id: &str) -> Seen {
    Seen::Ended(id.into())
}

#[tokio::test]
async fn a_pass_runs_each_request_once_in_its_resources_order_and_removes_every_container() {
    let fx = Fixture::new(&[
        ("a", "kind: echo\nparams:\n  message: a\n"),
        ("b", "kind: echo\nparams:\n  message: b\n"),
        ("c", "kind: echo\nresource: other\nparams:\n  message: c\n"),
        ("d", "kind: echo\nresource: other\nparams:\n  message: d\n"),
    ]);
    let slow = Script {
        runs_for: Duration::from_millis(300),
        ..Default::default()
    };
    fx.fake.script("a", slow.clone());
    fx.fake.script(
        "b",
        Script {
            exit_code: 3,
            ..Default::default()
        },
    );
    fx.fake.script("c", slow);
    let report = fx.pass().await.unwrap();
    let mut states: Vec<(String, State)> = report
        .items
        .iter()
        .map(|s| (s.id.clone(), s.state))
        .collect();
    states.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        states,
        [
            ("a".into(), State::Succeeded),
            ("b".into(), State::Failed),
            ("c".into(), State::Succeeded),
            ("d".into(), State::Succeeded)
        ]
    );
    let seen = fx.fake.seen();
    for id in ["a", "b", "c", "d"] {
        let runs = seen.iter().filter(|s| **s == started(id)).count();
        assert_eq!(runs, 1, "{id} ran {runs} times: {seen:?}");
    }
    // One resource's requests in merge order, one after the other; two resources side by side.
    assert!(
        position(&seen, &ended("a")) < position(&seen, &started("b")),
        "{seen:?}"
    );
    assert!(
        position(&seen, &ended("c")) < position(&seen, &started("d")),
        "{seen:?}"
    );
    assert_eq!(fx.fake.most_at_once(), 2, "{seen:?}");
    assert!(fx.fake.live().is_empty(), "left: {:?}", fx.fake.live());

    let b = fx.published("b").expect("b's status is on main");
    assert_eq!(
        (b.state, b.reason.as_deref(), b.exit_code),
        (State::Failed, Some("exit code 3"), Some(3))
    );
    assert_eq!(
        events(&fx.log("a")),
        [
            "received",
            "validated",
            "started",
            "output",
            "exit",
            "finished"
        ]
    );

    // A second pass finds everything recorded: nothing runs again.
    let again = fx.pass().await.unwrap();
    assert!(again.items.is_empty(), "{:?}", again.items);
    assert_eq!(fx.fake.seen().len(), seen.len());

    // The metrics count what the lifecycle said, and nothing is left running or queued.
    let m = &fx.metrics;
    assert_eq!(m.recorded("echo", State::Succeeded), 3);
    assert_eq!(m.recorded("echo", State::Failed), 1);
    assert_eq!((m.running_now(), m.queued_now()), (0, 0));
    let text = m.encode();
    for line in [
        "codex_runner_passes_total{outcome=\"ok\"} 2",
        "codex_runner_pushes_total 1",
        "codex_runner_request_queue_wait_seconds_count 4",
        "codex_runner_container_start_seconds_count 4",
        "codex_runner_request_duration_seconds_count{kind=\"echo\"} 4",
        "codex_runner_pending_results 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}

#[tokio::test]
async fn what_the_executor_reports_decides_the_state_and_a_bad_request_never_reaches_it() {
    let fx = Fixture::new(&[
        (
            "slow",
            "kind: echo\ntimeout: 1s\nparams:\n  message: slow\n",
        ),
        ("oom", "kind: echo\nparams:\n  message: oom\n"),
        ("bad", "kind: echo\nparams:\n  text: no message\n"),
    ]);
    fx.fake.script(
        "slow",
        Script {
            runs_for: Duration::from_secs(30),
            ..Default::default()
        },
    );
    fx.fake.script(
        "oom",
        Script {
            oom: true,
            ..Default::default()
        },
    );
    fx.pass().await.unwrap();
    let slow = fx.published("slow").unwrap();
    assert_eq!(
        (slow.state, slow.reason.as_deref()),
        (State::TimedOut, Some("timeout after 1s"))
    );
    let oom = fx.published("oom").unwrap();
    assert_eq!(
        (oom.state, oom.reason.as_deref()),
        (State::Failed, Some("oom"))
    );
    let bad = fx.published("bad").unwrap();
    assert_eq!(bad.state, State::Rejected);
    assert!(
        !fx.fake.seen().contains(&started("bad")),
        "{:?}",
        fx.fake.seen()
    );
    let log = fx.log("bad");
    assert_eq!(events(&log), ["received", "rejected", "finished"]);
    let violations = log[1]["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v["file"] == "requests/bad.yaml" && v["line"].is_u64()),
        "{violations:?}"
    );
}

#[tokio::test]
async fn an_image_the_executor_cannot_get_rejects_the_request_without_a_container() {
    let fx = Fixture::new(&[("a", "kind: echo\nparams:\n  message: a\n")]);
    fx.fake.without_image("fake/busybox:1");
    fx.pass().await.unwrap();
    let a = fx.published("a").unwrap();
    assert_eq!(a.state, State::Rejected);
    assert!(
        a.reason
            .as_deref()
            .unwrap_or_default()
            .contains("could not be pulled"),
        "{a:?}"
    );
    assert!(fx.fake.seen().is_empty(), "{:?}", fx.fake.seen());
}

#[tokio::test]
async fn a_draining_runner_starts_nothing_and_loses_nothing() {
    let fx = Fixture::new(&[
        ("a", "kind: echo\nparams:\n  message: a\n"),
        ("b", "kind: echo\nresource: other\nparams:\n  message: b\n"),
    ]);
    fx.shutdown.advance(Stage::Drain);
    let report = fx.pass().await.unwrap();
    assert!(report.items.is_empty(), "{:?}", report.items);
    assert!(fx.fake.seen().is_empty(), "{:?}", fx.fake.seen());
    assert!(fx.published("a").is_none() && fx.published("b").is_none());

    // The next runner process (a shutdown of its own) runs both.
    let next = Fixture {
        tmp: fx.tmp,
        fake: fx.fake.clone(),
        shutdown: Shutdown::default(),
        metrics: Arc::default(),
    };
    next.pass().await.unwrap();
    assert_eq!(next.published("a").unwrap().state, State::Succeeded);
    assert_eq!(next.published("b").unwrap().state, State::Succeeded);
}

#[tokio::test]
async fn a_cancelled_handler_is_recorded_as_cancelled() {
    let fx = Fixture::new(&[("a", "kind: echo\nparams:\n  message: a\n")]);
    fx.fake.script(
        "a",
        Script {
            runs_for: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let shutdown = fx.shutdown.clone();
    let fake = fx.fake.clone();
    tokio::spawn(async move {
        while !fake.seen().contains(&started("a")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.advance(Stage::Cancel);
    });
    fx.pass().await.unwrap();
    let a = fx.published("a").unwrap();
    assert_eq!(
        (a.state, a.reason.as_deref()),
        (State::Cancelled, Some("cancelled: the runner was stopping"))
    );
}

#[tokio::test]
async fn a_container_a_dead_process_left_is_followed_to_its_end_not_run_again() {
    let fx = Fixture::new(&[("a", "kind: echo\nparams:\n  message: a\n")]);
    let container = fx.journal("a", Phase::Started);
    // Exited on this boot; its owner (a pid no process has) is gone.
    let owner = format!("{}/{}", crate::exec::boot_id(), u32::MAX - 1);
    fx.fake.fate(
        &container,
        Fate::Exited {
            owner: Some(owner),
            exit_code: Some(0),
        },
    );
    fx.pass().await.unwrap();
    let seen = fx.fake.seen();
    assert!(!seen.contains(&started("a")), "ran again: {seen:?}");
    assert!(
        seen.contains(&Seen::Followed(container.clone())),
        "{seen:?}"
    );
    assert!(seen.contains(&Seen::Removed(container)), "{seen:?}");
    let a = fx.published("a").unwrap();
    assert_eq!((a.state, a.attempt), (State::Succeeded, 1));
    let log = fx.log("a");
    let names = events(&log);
    assert!(
        names.contains(&"reattached") && names.contains(&"output"),
        "{names:?}"
    );
}

#[tokio::test]
async fn an_attempt_whose_container_vanished_runs_again_as_the_next_attempt() {
    let fx = Fixture::new(&[("a", "kind: echo\nparams:\n  message: a\n")]);
    fx.journal("a", Phase::Started);
    fx.pass().await.unwrap();
    assert_eq!(
        fx.fake
            .seen()
            .iter()
            .filter(|s| **s == started("a"))
            .count(),
        1
    );
    let a = fx.published("a").unwrap();
    assert_eq!((a.state, a.attempt), (State::Succeeded, 2));
    let log = fx.log("a");
    let interrupted = log.iter().find(|e| e["event"] == "interrupted").unwrap();
    assert_eq!(interrupted["policy"], "rerun");
    assert_eq!(interrupted["next_attempt"], 2);
}

#[tokio::test]
async fn an_engine_that_fails_mid_run_fails_the_pass_and_the_next_pass_reruns_the_request() {
    let fx = Fixture::new(&[("a", "kind: echo\nparams:\n  message: a\n")]);
    fx.fake.script(
        "a",
        Script {
            engine_fails: true,
            ..Default::default()
        },
    );
    let failed = fx.pass().await.unwrap_err();
    assert_eq!(failed.exit_code(), crate::exit::EXECUTOR, "{failed}");
    assert!(fx.published("a").is_none());
    let record = journal::read(&crate::record::ResultDir::at(fx.result_dir("a")))
        .expect("the attempt stays journaled");
    assert_eq!(record.phase, Phase::EngineLost);

    // The engine is back; the container it lost exited non-zero: the policy reruns it.
    fx.fake.fate(
        &record.container,
        Fate::Exited {
            owner: Some(format!("{}/{}", crate::exec::boot_id(), u32::MAX - 1)),
            exit_code: Some(137),
        },
    );
    fx.fake.script("a", Script::default());
    fx.pass().await.unwrap();
    let a = fx.published("a").unwrap();
    assert_eq!((a.state, a.attempt), (State::Succeeded, 2));
}

#[tokio::test]
async fn validating_pull_requests_leaves_no_ref_of_them_in_the_mirror() {
    let fx = Fixture::new(&[]);
    let origin = SeedRepo::open(&fx.origin()).unwrap();
    let main = origin.tip("refs/heads/main").unwrap();
    let heads = [
        ("requests/good.yaml", "kind: echo\nparams:\n  message: hi\n"),
        ("requests/bad.yaml", "kind: echo\nparams: {}\n"),
    ];
    let opts = fx.options();
    for (number, (path, body)) in (1u64..).zip(heads) {
        let head = origin
            .commit(
                &format!("refs/pull/{number}/head"),
                &[main],
                &SeedFile::texts(&[(path, body)]),
                "a request",
            )
            .unwrap();
        let job = super::PullJob {
            number,
            head_sha: head.to_string(),
        };
        let verdict = super::validate_pull(&opts, &job).await.unwrap();
        assert_eq!(verdict.head, head.to_string());
        if number == 1 {
            assert_eq!(verdict.valid.len(), 1, "{verdict:?}");
            assert!(verdict.violations.is_empty(), "{verdict:?}");
        } else {
            assert!(verdict.valid.is_empty(), "{verdict:?}");
            assert_eq!(verdict.violations[0].file, path, "{verdict:?}");
        }
    }
    let work = opts.work_dir.join(remote_key(&opts.remote)).join("pulls");
    let mirror = crate::git::Mirror::open(&work, &opts.remote, None).unwrap();
    assert_eq!(
        mirror.pull_refs(),
        0,
        "a validated pull request's ref stays"
    );
}
