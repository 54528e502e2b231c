//! The dispatch loop end to end: real git remote, real binary, real Docker.

use crate::common::{archived_path, docker, log_path, ms, Repo};

#[test]
fn example_handlers_run_and_results_land_on_main() {
    docker();
    let mut repo = Repo::new("t-happy");
    let merge = repo.merge_pr(&[
        ("requests/hello.yaml", b"kind: echo\nparams:\n  message: hi there\n"),
        ("requests/deploy-web.yaml", b"kind: deploy\nparams: {service: web, version: v1.2.3, environment: staging, steps: 1}\n"),
        ("requests/backup-orders.yml", b"kind: backup\nid: nightly-orders\nparams: {database: orders, retention_days: 3}\n"),
    ]);
    let pass = repo.dispatch(&[]).ok();
    let states = pass.states();
    assert_eq!(states.len(), 3, "{:?}", pass.report);
    assert!(
        states.values().all(|s| s == "succeeded"),
        "{states:?}\n{}",
        pass.stderr
    );

    // echo: output streamed into the log, env as documented.
    let out = repo.output("hello");
    assert!(out.contains(&"message: hi there".to_string()), "{out:?}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("request hello (echo, attempt 1) from ") && l.ends_with(&merge)),
        "{out:?}"
    );
    // deploy: built from containers/deploy through the API, the rollout tool from the image.
    let out = repo.output("deploy-web");
    assert!(
        out.contains(&"rollout plan: web -> v1.2.3 in 1 step(s)".to_string()),
        "{out:?}"
    );
    let st = repo.status("deploy-web");
    assert!(
        st["image"]
            .as_str()
            .unwrap()
            .starts_with("codex-runner-build/deploy:"),
        "{st}"
    );
    assert_eq!(st["resource"], "staging/web");
    // backup: python in its own image, the explicit id names the files.
    let out = repo.output("nightly-orders");
    assert!(
        out.iter().any(|l| l.starts_with("backup of orders: ")),
        "{out:?}"
    );

    for id in ["hello", "deploy-web", "nightly-orders"] {
        let st = repo.status(id);
        assert_eq!(st["state"], "succeeded");
        assert_eq!(st["exit_code"], 0);
        assert_eq!(st["commit"], merge.as_str(), "the merge commit brought it");
        assert_eq!(st["runner"], "t-happy");
        assert_eq!(st["attempt"], 1);
        assert!(st["duration_ms"].as_u64().unwrap() > 0);
        let events: Vec<String> = repo
            .log(id)
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(events.first().map(String::as_str), Some("received"));
        for want in ["validated", "started", "output", "exit", "finished"] {
            assert!(
                events.iter().any(|e| e == want),
                "{id}: no {want} in {events:?}"
            );
        }
    }
    // Requests moved with history, inbox empty.
    assert!(repo.main_file("requests/hello.yaml").is_none());
    assert_eq!(
        repo.main_file(&archived_path("hello")).as_deref(),
        Some("kind: echo\nparams:\n  message: hi there\n")
    );
    assert!(repo.main_file(&archived_path("nightly-orders")).is_some());
    repo.sync();
    let follow = repo.git(&[
        "log",
        "--follow",
        "--format=%s",
        "--",
        &archived_path("hello"),
    ]);
    assert!(
        follow.contains("add requests"),
        "history kept across the move: {follow}"
    );
    let msg = repo.git(&["log", "-1", "--format=%B", "origin/main"]);
    assert!(
        msg.contains("Codex-Request: ") && msg.contains("Codex-State: succeeded"),
        "{msg}"
    );
    assert!(msg.contains("Codex-Runner: t-happy"), "{msg}");

    // A second pass finds nothing new and pushes nothing.
    let before = repo.main_commits();
    let pass = repo.dispatch(&[]).ok();
    assert!(pass.states().is_empty(), "{:?}", pass.report);
    assert_eq!(repo.main_commits(), before);
    repo.assert_no_containers();
}

#[test]
fn failing_timed_out_and_oom_handlers_are_recorded_as_such() {
    docker();
    let mut repo = Repo::new("t-fail");
    add_stubborn_handlers(&repo);
    repo.merge_pr(&[
        (
            "requests/boom.yaml",
            b"kind: echo\nparams: {message: about to fail, exit: 3}\n",
        ),
        (
            "requests/slow.yaml",
            b"kind: echo\ntimeout: 2s\nparams: {message: sleepy, sleep: 60}\n",
        ),
        ("requests/hog.yaml", b"kind: hog\n"),
        ("requests/polite.yaml", b"kind: term\ntimeout: 2s\n"),
        ("requests/mute.yaml", b"kind: mute\ntimeout: 2s\n"),
        (
            "requests/paced.yaml",
            b"kind: echo\nparams: {message: paced, sleep: 2}\n",
        ),
    ]);
    let config = repo.tmp.path().join("host.toml");
    std::fs::write(&config, "[limits]\ngrace = \"2s\"\n").unwrap();
    let pass = repo.dispatch(&["--config", config.to_str().unwrap()]).ok();
    let states = pass.states();

    assert_eq!(states["boom"], "failed");
    let st = repo.status("boom");
    assert_eq!(
        (st["exit_code"].as_i64(), st["reason"].as_str()),
        (Some(3), Some("exit code 3"))
    );
    assert!(repo
        .output("boom")
        .contains(&"failing on purpose with exit code 3".to_string()));

    assert_stopped_at_their_timeout(&repo, &states);

    // Output is written as it arrives: the lines around a 2 s sleep are 2 s apart in the log.
    let log = repo.log("paced");
    let at = |line: &str| {
        let e = log
            .iter()
            .find(|e| e["event"] == "output" && e["line"] == line)
            .unwrap_or_else(|| panic!("{line}"));
        ms(e["ts"].as_str().unwrap())
    };
    let gap = at("done") - at("sleeping 2s");
    assert!(
        gap >= 1800,
        "output was collected, not streamed: {gap}ms between lines"
    );

    assert_eq!(states["hog"], "failed");
    let st = repo.status("hog");
    assert_eq!(st["reason"], "oom", "{st}");
    assert!(!repo.output("hog").iter().any(|l| l.starts_with("survived")));
    // Failed requests leave the inbox too, so they never run again by accident.
    for id in ["boom", "slow", "hog"] {
        assert!(repo.main_file(&format!("requests/{id}.yaml")).is_none());
        assert!(repo.main_file(&archived_path(id)).is_some());
    }
    repo.assert_no_containers();
}

#[test]
fn same_resource_is_serialized_and_different_resources_run_together() {
    docker();
    let mut repo = Repo::new("t-locks");
    let deploy = |svc: &str, env: &str| {
        format!("kind: deploy\nparams: {{service: {svc}, version: '1.0', environment: {env}, steps: 3}}\n")
    };
    let a = deploy("web", "staging");
    let b = deploy("api", "staging");
    let c = deploy("db", "staging");
    let d = deploy("web", "staging");
    repo.merge_pr(&[
        ("requests/a-web.yaml", a.as_bytes()),
        ("requests/b-api.yaml", b.as_bytes()),
        ("requests/c-db.yaml", c.as_bytes()),
        ("requests/d-web.yaml", d.as_bytes()),
    ]);
    let pass = repo.dispatch(&["--concurrency", "3"]).ok();
    assert!(
        pass.states().values().all(|s| s == "succeeded"),
        "{:?}",
        pass.states()
    );
    let span = |id: &str| {
        let st = repo.status(id);
        (
            ms(st["started_at"].as_str().unwrap()),
            ms(st["finished_at"].as_str().unwrap()),
        )
    };
    let (aw, bw) = (span("a-web"), span("d-web"));
    assert!(
        aw.1 <= bw.0,
        "same resource staging/web overlapped: {aw:?} {bw:?}"
    );
    let api = span("b-api");
    let db = span("c-db");
    let overlaps = |x: (u64, u64), y: (u64, u64)| x.0 < y.1 && y.0 < x.1;
    assert!(
        overlaps(aw, api) && overlaps(api, db),
        "different resources ran one after another: web {aw:?} api {api:?} db {db:?}"
    );
    repo.assert_no_containers();
}

#[test]
fn two_runner_processes_serialize_on_a_shared_resource() {
    docker();
    // Two repositories, one host: both runners share the state dir (its lock files, and the
    // default work dir under it).
    let mut one = Repo::new("t-flock-1");
    let mut two = Repo::new("t-flock-2");
    let req = b"kind: echo\nresource: shared-db\nparams: {message: hold, sleep: 2}\n";
    one.merge_pr(&[("requests/one.yaml", req)]);
    two.merge_pr(&[("requests/two.yaml", req)]);
    two.state = one.state.clone();
    let run = |repo: &Repo| {
        repo.dispatch_command(repo.origin.to_str().unwrap(), &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut p1, mut p2) = (run(&one), run(&two));
    assert!(p1.wait().unwrap().success() && p2.wait().unwrap().success());
    let (s1, s2) = (one.status("one"), two.status("two"));
    let span = |s: &serde_json::Value| {
        (
            ms(s["started_at"].as_str().unwrap()),
            ms(s["finished_at"].as_str().unwrap()),
        )
    };
    let (x, y) = (span(&s1), span(&s2));
    assert!(
        x.1 <= y.0 || y.1 <= x.0,
        "two processes ran shared-db at once: {x:?} {y:?}"
    );
    let waited = one
        .log("one")
        .iter()
        .chain(two.log("two").iter())
        .any(|e| e["event"] == "waited_for_lock");
    assert!(
        waited,
        "one of them must have queued behind the other's lock"
    );
    one.assert_no_containers();
    two.assert_no_containers();
}

/// Run the isolation probe as a handler (under `runtime`, when given, which the host config
/// allows); its output lines, once it succeeded.
fn isolation_probe(name: &str, runtime: Option<&str>) -> Vec<String> {
    let config = runtime.map(|r| format!("[limits]\nruntimes = [\"{r}\"]\n"));
    isolation_probe_in(name, runtime, config.as_deref())
}

/// [`isolation_probe`] with the host config `config` (the executor's, the runtimes).
pub(crate) fn isolation_probe_in(
    name: &str,
    runtime: Option<&str>,
    config: Option<&str>,
) -> Vec<String> {
    docker();
    let mut repo = Repo::new(name);
    repo.write(
        "handlers/isolation.sh",
        br#"#!/bin/sh
fail=0
echo "uid=$(id -u) gid=$(id -g)"
echo "kernel=$(uname -r)"
[ "$(id -u)" != 0 ] || { echo "FAIL: root"; fail=1; }
if touch /probe 2>/dev/null; then echo "FAIL: / writable"; fail=1; else echo "root read-only"; fi
if touch /codex/repo/probe 2>/dev/null; then echo "FAIL: repo writable"; fail=1; else echo "repo read-only"; fi
touch /tmp/probe && echo "tmp writable"
eff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
nnp=$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)
echo "CapEff=$eff CapBnd=$bnd NoNewPrivs=$nnp"
[ "$eff" = 0000000000000000 ] && [ "$bnd" = 0000000000000000 ] || { echo "FAIL: capabilities"; fail=1; }
# gVisor's /proc does not show NoNewPrivs; its sandbox enforces it below the handler.
[ "$nnp" = 1 ] || [ "$GVISOR" = 1 ] || { echo "FAIL: new privileges allowed"; fail=1; }
ifs=$(ls /sys/class/net | tr '\n' ' ')
echo "interfaces: $ifs"
[ "$ifs" = "lo " ] || { echo "FAIL: network"; fail=1; }
test -r /codex/request.json && echo "request at /codex/request.json"
mem=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null)
pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max 2>/dev/null)
cpu=$(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null)")
echo "memory=$mem pids=$pids pid1=$(cat /proc/1/comm)"
echo "cpu=$cpu"
exit $fail
"#,
    );
    sh_chmod(&repo, "handlers/isolation.sh");
    let mut entry = String::from(
        "  isolation:\n    run: handlers/isolation.sh\n    image: codex-runner/busybox:1\n",
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(r) = runtime {
        entry.push_str(&format!("    runtime: {r}\n    env: {{GVISOR: \"1\"}}\n"));
    }
    if let Some(text) = config {
        let config = repo.tmp.path().join("host.toml");
        std::fs::write(&config, text).unwrap();
        args = vec!["--config".into(), config.display().to_string()];
    }
    append_index(&repo, &entry);
    repo.merge_pr(&[("requests/iso.yaml", b"kind: isolation\n")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pass = repo.dispatch(&args).ok();
    let out = repo.output("iso");
    assert_eq!(pass.states()["iso"], "succeeded", "{out:#?}");
    repo.assert_no_containers();
    out
}

pub(crate) fn assert_lines(out: &[String], want: &[&str]) {
    for w in want {
        assert!(out.iter().any(|l| l == w), "missing {w:?} in {out:#?}");
    }
}

/// What the probe says under every runtime: not root, read-only root and repository, a
/// writable /tmp, only `lo`, the request mounted.
pub(crate) const HARDENED: &[&str] = &[
    "uid=65534 gid=65534",
    "root read-only",
    "repo read-only",
    "tmp writable",
    "interfaces: lo ",
    "request at /codex/request.json",
];

#[test]
fn hardened_container_is_not_root_has_no_network_no_caps_and_a_read_only_root() {
    let out = isolation_probe("t-iso", None);
    assert_lines(&out, HARDENED);
    assert_lines(
        &out,
        &[
            "memory=536870912 pids=256 pid1=docker-init",
            "cpu=100000 100000",
            "CapEff=0000000000000000 CapBnd=0000000000000000 NoNewPrivs=1",
        ],
    );
    // The host's own kernel, not a sandbox's.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_lines(&out, &[&format!("kernel={}", host.trim())]);
}

#[test]
fn under_gvisor_the_same_hardening_holds_and_the_kernel_is_gvisors() {
    // `scripts/docker-up.sh` registers Debian's runsc with the engine (.ci/run installs it).
    let out = isolation_probe("t-iso-gvisor", Some("runsc"));
    assert_lines(&out, HARDENED);
    assert_lines(
        &out,
        &[
            // gVisor's Sentry answers uname: its own kernel version, not the host's.
            "kernel=4.4.0",
            "CapEff=0000000000000000 CapBnd=0000000000000000 NoNewPrivs=",
        ],
    );
    assert!(
        out.iter().any(|l| l.ends_with("pid1=docker-init")),
        "{out:#?}"
    );
}

#[test]
fn a_runtime_the_engine_does_not_have_stops_dispatch_at_its_start() {
    docker();
    let repo = Repo::new("t-no-runtime");
    let config = repo.tmp.path().join("host.toml");
    std::fs::write(&config, "[limits]\nruntimes = [\"no-such-runtime\"]\n").unwrap();
    let out = repo.dispatch(&["--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "limits.runtimes names no-such-runtime, which the container engine does not have"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn output_past_the_cap_is_cut_with_a_marker() {
    docker();
    let mut repo = Repo::new("t-cap");
    repo.write("handlers/loud.sh", b"#!/bin/sh\ni=0\nwhile [ $i -lt 5000 ]; do echo \"line $i of noise\"; i=$((i+1)); done\necho done >&2\n");
    sh_chmod(&repo, "handlers/loud.sh");
    append_index(
        &repo,
        "  loud:\n    run: handlers/loud.sh\n    image: codex-runner/busybox:1\n",
    );
    repo.merge_pr(&[("requests/loud.yaml", b"kind: loud\n")]);
    let config = repo.tmp.path().join("host.toml");
    std::fs::write(&config, "[limits]\noutput_cap = \"4KiB\"\n").unwrap();
    let pass = repo.dispatch(&["--config", config.to_str().unwrap()]).ok();
    assert_eq!(pass.states()["loud"], "succeeded");
    let log = repo.log("loud");
    // The cap counts output as the log holds it, JSON included: at most one line over.
    let text = repo.main_file(&log_path("loud")).unwrap();
    let kept: usize = text
        .lines()
        .filter(|l| l.contains("\"event\":\"output\""))
        .map(|l| l.len() + 1)
        .sum();
    assert!(kept <= 4096 + 200 && kept > 3800, "kept {kept} bytes");
    assert!(log
        .iter()
        .any(|e| e["event"] == "output_truncated" && e["cap_bytes"] == 4096));
    let exit = log.iter().find(|e| e["event"] == "exit").unwrap();
    assert!(exit["output_bytes"].as_u64().unwrap() > 60_000, "{exit}");
    repo.assert_no_containers();
}

#[test]
fn an_unpullable_image_or_a_handler_beyond_host_limits_rejects_the_request() {
    docker();
    let mut repo = Repo::new("t-pull");
    // A registry on a closed loopback port: the pull fails at once and nothing leaves the host.
    append_index(
        &repo,
        "  ghost:\n    run: handlers/echo.sh\n    image: 127.0.0.1:9/codex-runner/missing:1\n  wide:\n    run: handlers/echo.sh\n    image: codex-runner/busybox:1\n    network: host\n",
    );
    repo.merge_pr(&[
        (
            "requests/ghost.yaml",
            b"kind: ghost\nparams: {message: x}\n",
        ),
        ("requests/wide.yaml", b"kind: wide\nparams: {message: x}\n"),
    ]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states()["wide"], "rejected");
    let reason = repo.status("wide")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("the host network") && reason.contains("does not allow"),
        "{reason}"
    );
    assert_eq!(pass.states()["ghost"], "rejected");
    let st = repo.status("ghost");
    let reason = st["reason"].as_str().unwrap();
    assert!(
        reason.contains("127.0.0.1:9/codex-runner/missing:1")
            && reason.contains("could not be pulled"),
        "{reason}"
    );
    assert!(!repo.log("ghost").iter().any(|e| e["event"] == "started"));
    repo.assert_no_containers();
}

/// `slow` (echo sleeping 60 s), `polite` (term) and `mute` (mute), each with a 2 s timeout and
/// a 2 s grace, ended as a timeout: stopped soon after it, output so far kept, SIGTERM first.
pub(crate) fn assert_stopped_at_their_timeout(
    repo: &Repo,
    states: &std::collections::BTreeMap<String, String>,
) {
    assert_eq!(states["slow"], "timed_out");
    let st = repo.status("slow");
    assert_eq!(st["reason"], "timeout after 2s");
    let took = st["duration_ms"].as_u64().unwrap();
    assert!(
        (2000..20_000).contains(&took),
        "stopped after the timeout and grace, not the 60s sleep: {took}ms"
    );
    assert!(
        repo.output("slow").contains(&"sleeping 60s".to_string()),
        "output before the timeout is kept"
    );

    // SIGTERM reaches the handler first; it may clean up within the grace period.
    assert_eq!(states["polite"], "timed_out");
    assert!(
        repo.output("polite")
            .contains(&"got SIGTERM, cleaning up".to_string()),
        "{:?}",
        repo.output("polite")
    );
    assert_eq!(repo.status("polite")["exit_code"], 143);

    // Closing its output does not let a handler outlive its timeout.
    assert_eq!(states["mute"], "timed_out");
    assert!(repo.status("mute")["duration_ms"].as_u64().unwrap() < 20_000);
}

/// Handlers that end badly: `hog` (past its 48 MiB), `term` (cleans up on SIGTERM), `mute`
/// (closes its output and sleeps), for the outcome tests of every executor.
pub(crate) fn add_stubborn_handlers(repo: &Repo) {
    repo.write("handlers/hog.py", b"#!/usr/bin/env python3\nprint('allocating', flush=True)\nx = bytearray(b'x') * (512 << 20)\nprint('survived', len(x))\n");
    sh_chmod(repo, "handlers/hog.py");
    repo.write(
        "handlers/term.sh",
        b"#!/bin/sh\ntrap 'echo \"got SIGTERM, cleaning up\"; exit 143' TERM\necho working\nsleep 60 &\nwait $!\n",
    );
    sh_chmod(repo, "handlers/term.sh");
    repo.write(
        "handlers/mute.sh",
        b"#!/bin/sh\necho going quiet\nexec >/dev/null 2>&1\nsleep 60\n",
    );
    sh_chmod(repo, "handlers/mute.sh");
    append_index(
        repo,
        "  hog:\n    run: handlers/hog.py\n    image: codex-runner/python:3\n    limits:\n      memory: 48MiB\n  term:\n    run: handlers/term.sh\n    image: codex-runner/busybox:1\n  mute:\n    run: handlers/mute.sh\n    image: codex-runner/busybox:1\n",
    );
}

pub(crate) fn sh_chmod(repo: &Repo, path: &str) {
    crate::common::sh(&repo.work, "chmod", &["+x", path]);
}

/// Add entries to handlers/index.yml in the working clone (committed with the next PR).
pub(crate) fn append_index(repo: &Repo, entries: &str) {
    let path = repo.work.join("handlers/index.yml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n');
    text.push_str(entries);
    std::fs::write(path, text).unwrap();
}

#[test]
fn with_docker_down_nothing_runs_nothing_is_lost_and_the_exit_code_says_so() {
    docker();
    let mut repo = Repo::new("t-nodocker");
    repo.merge_pr(&[
        (
            "requests/waits.yaml",
            b"kind: echo\nparams: {message: later}\n",
        ),
        ("requests/broken.yaml", b"kind: nope\n"),
    ]);
    let sock = repo.tmp.path().join("no-docker.sock");
    let host = format!("unix://{}", sock.display());
    // Each pass leaves its metrics for node_exporter's textfile collector, failed or not.
    let prom = repo.tmp.path().join("codex-runner.prom");
    let prom_arg = prom.to_str().unwrap();
    let metric = |name: &str| -> Option<f64> {
        std::fs::read_to_string(&prom)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let pass = repo.dispatch_env(
        &["--metrics-file", prom_arg],
        &[("DOCKER_HOST", host.as_str())],
    );
    assert_eq!(pass.code, 5, "{}", pass.stderr);
    assert!(
        pass.stderr.contains("the executor failed"),
        "{}",
        pass.stderr
    );
    // The rejection needs no Docker and is recorded; the runnable request waits in the inbox.
    assert_eq!(repo.status("broken")["state"], "rejected");
    assert!(repo.main_file("requests/waits.yaml").is_some());
    assert!(repo.main_file(&log_path("waits")).is_none());
    assert_eq!(
        metric("codex_runner_passes_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric("codex_runner_requests_total{kind=\"\",state=\"rejected\"}"),
        Some(1.0)
    );
    assert_eq!(metric("codex_runner_requests_queued"), Some(0.0));
    // With the engine back, it runs.
    let pass = repo.dispatch(&["--metrics-file", prom_arg]).ok();
    assert_eq!(pass.states()["waits"], "succeeded");
    assert_eq!(
        metric("codex_runner_passes_total{outcome=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric("codex_runner_requests_total{kind=\"echo\",state=\"succeeded\"}"),
        Some(1.0)
    );
    let succeeded = metric("codex_runner_last_successful_pass_timestamp_seconds").unwrap();
    assert!(succeeded > 1.7e9, "{succeeded}");
    repo.assert_no_containers();
    // A later failed pass keeps the time of the last one that succeeded.
    repo.merge_pr(&[(
        "requests/more.yaml",
        b"kind: echo\nparams: {message: more}\n",
    )]);
    let pass = repo.dispatch_env(
        &["--metrics-file", prom_arg],
        &[("DOCKER_HOST", host.as_str())],
    );
    assert_eq!(pass.code, 5, "{}", pass.stderr);
    assert_eq!(
        metric("codex_runner_passes_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric("codex_runner_last_successful_pass_timestamp_seconds"),
        Some(succeeded)
    );
    // node_exporter reads only *.prom files: another name is refused before anything runs.
    let txt = repo.tmp.path().join("metrics.txt");
    let refused = repo.dispatch(&["--metrics-file", txt.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("must end in .prom"),
        "{}",
        refused.stderr
    );
    assert!(repo.main_file(&log_path("more")).is_none() && !txt.exists());
}

#[test]
fn a_build_image_is_reused_until_its_directory_changes() {
    docker();
    let mut repo = Repo::new("t-build");
    let req = |svc: &str| {
        format!("kind: deploy\nparams: {{service: {svc}, version: '1', environment: staging, steps: 1}}\n")
    };
    let (a, b, c) = (req("a"), req("b"), req("c"));
    repo.merge_pr(&[
        ("requests/a.yaml", a.as_bytes()),
        ("requests/b.yaml", b.as_bytes()),
    ]);
    repo.dispatch(&[]).ok();
    let (ia, ib) = (
        repo.status("a")["image"].clone(),
        repo.status("b")["image"].clone(),
    );
    assert_eq!(ia, ib, "same directory, same image");
    // Change the image's directory: the tag follows its git tree, so it is rebuilt.
    let rollout =
        std::fs::read_to_string(crate::common::root().join("containers/deploy/rollout")).unwrap();
    let changed = rollout.replace("rollout plan:", "rollout plan (v2):");
    repo.merge_pr(&[("containers/deploy/rollout", changed.as_bytes())]);
    repo.merge_pr(&[("requests/c.yaml", c.as_bytes())]);
    repo.dispatch(&[]).ok();
    let ic = repo.status("c")["image"].clone();
    assert_ne!(ic, ia, "a changed directory builds a new image");
    assert!(
        repo.output("c")
            .iter()
            .any(|l| l.starts_with("rollout plan (v2):")),
        "{:?}",
        repo.output("c")
    );
    repo.assert_no_containers();
}

/// The tree directories under every `checkouts/` of a work directory, with their inodes.
fn checkouts_in(work: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    for remote in std::fs::read_dir(work).unwrap().flatten() {
        let Ok(trees) = std::fs::read_dir(remote.path().join("checkouts")) else {
            continue;
        };
        for t in trees.flatten() {
            let name = t.file_name().to_string_lossy().into_owned();
            if t.path().is_dir() {
                out.insert(name, t.metadata().unwrap().ino());
            }
        }
    }
    out
}

#[test]
fn checkouts_leave_out_results_and_archive_and_are_shared_by_tree_across_passes() {
    docker();
    let mut repo = Repo::new("t-lean");
    let look = "#!/bin/sh\necho \"sees: $(ls -a /codex/repo | tr '\\n' ' ')\"\n";
    let entry = |extra: &str| {
        format!("    image: codex-runner/busybox:1\n    timeout: 1m\n    resource: \"{{{{ params.lane }}}}\"\n{extra}    params:\n      type: object\n      properties:\n        lane: {{ type: string }}\n")
    };
    repo.add_handler("look", look, &entry(""));
    repo.add_handler("lookall", look, &entry("    checkout: full\n"));
    repo.merge_pr(&[
        ("requests/a.yaml", b"kind: look\nparams: {lane: a}\n"),
        ("requests/b.yaml", b"kind: look\nparams: {lane: b}\n"),
        (
            "requests/c.yaml",
            b"kind: lookall\nruns-on: [later]\nparams: {lane: c}\n",
        ),
        (
            "requests/d.yaml",
            b"kind: look\nruns-on: [later]\nparams: {lane: d}\n",
        ),
    ]);
    let work = repo.tmp.path().join("runner-work");
    let work_arg = work.to_str().unwrap().to_string();
    let sees = |id: &str| {
        repo.output(id)
            .into_iter()
            .find(|l| l.starts_with("sees: "))
            .unwrap_or_else(|| panic!("{id}: {:?}", repo.log(id)))
    };

    // Pass 1: a and b, of one commit, share one checkout without logs/ and processed/.
    let first = repo.dispatch(&["--work-dir", &work_arg]).ok();
    assert_eq!(first.states().len(), 2, "{:?}", first.report);
    for id in ["a", "b"] {
        let line = sees(id);
        assert!(
            line.contains("handlers") && line.contains("requests"),
            "{line}"
        );
        assert!(
            !line.contains("logs") && !line.contains("processed"),
            "{id} sees the outbox or the archive: {line}"
        );
    }
    let after_first = checkouts_in(&work);
    assert_eq!(after_first.len(), 1, "one shared checkout: {after_first:?}");

    // Pass 2: d (same commit, same visible tree) reuses that checkout as it is; c asks for
    // the whole tree and gets one of its own, results and archive included.
    let second = repo
        .dispatch(&["--work-dir", &work_arg, "--labels", "later"])
        .ok();
    assert_eq!(second.states().len(), 2, "{:?}", second.report);
    let line = sees("d");
    assert!(
        !line.contains("logs") && !line.contains("processed"),
        "{line}"
    );
    let line = sees("c");
    assert!(
        line.contains("logs") && line.contains("processed"),
        "{line}"
    );
    let after_second = checkouts_in(&work);
    assert_eq!(after_second.len(), 2, "{after_second:?}");
    let (tree, inode) = after_first.iter().next().unwrap();
    assert_eq!(
        after_second.get(tree),
        Some(inode),
        "the lean checkout was reused, not exported again"
    );

    // Pass 3: a new merge; the checkouts no request and no container uses any more go.
    repo.merge_pr(&[("requests/e.yaml", b"kind: look\nparams: {lane: e}\n")]);
    let third = repo.dispatch(&["--work-dir", &work_arg]).ok();
    assert_eq!(third.states()["e"], "succeeded");
    let after_third = checkouts_in(&work);
    assert_eq!(after_third.len(), 1, "{after_third:?}");
    assert!(!after_third.contains_key(tree), "{after_third:?}");
    repo.assert_no_containers();
}
