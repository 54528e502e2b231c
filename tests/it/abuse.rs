//! Handlers that abuse their container: each is contained by the limits its entry and the host
//! set, and recorded with the right state and reason, while the runner and a well-behaved
//! request beside them are unaffected.

use crate::common::{docker, log_path, Ledger, Repo};

use serde_json::Value;

const BUSYBOX: &str = "    image: codex-runner/busybox:1\n";

#[test]
fn abusive_handlers_are_contained_and_reported_while_others_run() {
    docker();
    let mut repo = Repo::new("t-abuse");
    let ledger = Ledger::start();
    repo.add_handler(
        "forkbomb",
        // The bomb forks away in a background subshell while the script itself waits forever.
        // The script forks once, before the bomb starts (a `b | b &` of its own would fork
        // twice, and the second fork, racing the first child's bomb for the pids limit, could
        // fail and end the script with exit code 2), and `exec` needs no new process.
        "#!/bin/sh\nb() { b | b & }\n(b) &\nexec sleep 100000\n",
        &format!("{BUSYBOX}    timeout: 8s\n    limits: {{pids: 64, cpus: 0.5}}\n"),
    );
    repo.add_handler(
        "memhog",
        "#!/bin/sh\necho hogging\nexec tail -c 400m /dev/zero\n",
        &format!("{BUSYBOX}    limits: {{memory: 32MiB}}\n"),
    );
    repo.add_handler(
        "selfkill",
        // SIGKILLed, but not by the OOM killer: the engine reports no OOM, flag nor event.
        "#!/bin/sh\necho bye\nkill -9 $$\n",
        BUSYBOX,
    );
    repo.add_handler(
        "flood",
        "#!/bin/sh\nset -e\nyes 0123456789012345678901234567890123456789012345678901234567890123456789 | head -c 1073741824\necho\necho flooded >&2\n",
        BUSYBOX,
    );
    repo.add_handler(
        "sleeper",
        "#!/bin/sh\necho going to sleep\nexec sleep 100000\n",
        &format!("{BUSYBOX}    timeout: 3s\n"),
    );
    repo.add_handler(
        "rootwriter",
        "#!/bin/sh\nset -e\necho trying\necho pwned > /pwned\necho wrote\n",
        BUSYBOX,
    );
    repo.add_handler(
        "repowriter",
        "#!/bin/sh\nset -e\necho pwned > /codex/repo/handlers/echo.sh\necho wrote\n",
        BUSYBOX,
    );
    repo.add_handler(
        "network",
        &format!(
            "#!/bin/sh\necho interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1)\nwget -q -T 3 -O- 'http://127.0.0.1:{}/hit?id=network&attempt=1'\n",
            ledger.port
        ),
        BUSYBOX,
    );
    repo.add_handler(
        "tmpfill",
        "#!/bin/sh\nset -e\ndd if=/dev/zero of=/tmp/fill bs=1M count=200\necho filled\n",
        &format!("{BUSYBOX}    limits: {{tmpfs: 16MiB}}\n"),
    );
    let kinds = [
        "forkbomb",
        "memhog",
        "selfkill",
        "flood",
        "sleeper",
        "rootwriter",
        "repowriter",
        "network",
        "tmpfill",
    ];
    let mut files: Vec<(String, Vec<u8>)> = kinds
        .iter()
        .map(|k| {
            (
                format!("requests/{k}.yaml"),
                format!("kind: {k}\n").into_bytes(),
            )
        })
        .collect();
    files.push((
        "requests/bystander.yaml".into(),
        b"kind: echo\nparams: {message: unaffected}\n".to_vec(),
    ));
    repo.merge_pr(&crate::common::borrowed(&files));
    let config = repo.tmp.path().join("abuse.toml");
    std::fs::write(&config, "[limits]\ngrace = \"1s\"\noutput_cap = \"4MiB\"\n").unwrap();
    let started = std::time::Instant::now();
    let pass = repo
        .dispatch(&["--config", config.to_str().unwrap(), "--concurrency", "10"])
        .ok();
    let took = started.elapsed();
    let states = pass.states();
    let status = |id: &str| -> (String, String) {
        let s = repo.status(id);
        (
            s["state"].as_str().unwrap_or_default().to_string(),
            s["reason"].as_str().unwrap_or_default().to_string(),
        )
    };
    let out = |id: &str| repo.output(id).join("\n");

    assert_eq!(states["bystander"], "succeeded");
    assert!(out("bystander").contains("message: unaffected"));

    assert_eq!(
        status("forkbomb"),
        ("timed_out".into(), "timeout after 8s".into()),
        "the fork bomb hits its pids limit and its timeout: {}",
        out("forkbomb")
    );
    assert!(
        out("forkbomb").contains("can't fork: Resource temporarily unavailable"),
        "the pids limit stopped the bomb"
    );
    // Killed at its memory limit. Docker 20.10 names the OOM killer when its OOM event is
    // not lost: one that arrives after the container's exit has been processed is dropped
    // (seen when this test's flood and fork bomb load the host), and a SIGKILL is all there
    // is to say.
    let memhog = status("memhog");
    assert!(
        memhog == ("failed".into(), "oom".into())
            || memhog == ("failed".into(), "exit code 137".into()),
        "{memhog:?}: {}",
        out("memhog")
    );
    let hog_exit = repo.log("memhog");
    let hog_exit = hog_exit.iter().find(|e| e["event"] == "exit").unwrap();
    assert!(
        hog_exit["output_bytes"].as_u64().unwrap() < 1 << 20,
        "the hog never held the 400 MiB it would print: {hog_exit}"
    );
    assert_eq!(
        status("selfkill"),
        ("failed".into(), "exit code 137".into()),
        "{}",
        out("selfkill")
    );
    assert_eq!(
        status("sleeper"),
        ("timed_out".into(), "timeout after 3s".into())
    );

    let (state, _) = status("flood");
    assert_eq!(state, "succeeded", "{}", out("flood"));
    let log = repo.log("flood");
    assert!(
        log.iter().any(|e| e["event"] == "output_truncated"),
        "the cap is marked"
    );
    let exit = log.iter().find(|e| e["event"] == "exit").unwrap();
    let produced = exit["output_bytes"].as_u64().unwrap();
    assert!(produced > 1 << 30, "all of it was read: {produced}");
    let kept = repo.main_file(&log_path("flood")).unwrap().len();
    assert!(
        kept < (4 << 20) + (200 << 10),
        "the committed log holds the 4 MiB cap, not 1 GiB: {kept} bytes"
    );

    for (id, says) in [
        ("rootwriter", "Read-only file system"),
        ("repowriter", "Read-only file system"),
        ("tmpfill", "No space left on device"),
    ] {
        let (state, reason) = status(id);
        assert_eq!(state, "failed", "{id}: {}", out(id));
        assert!(reason.starts_with("exit code "), "{id}: {reason}");
        assert!(out(id).contains(says), "{id}: {}", out(id));
        assert!(!out(id).contains("wrote"), "{id} wrote");
    }
    assert!(!out("tmpfill").contains("filled"));

    let (state, reason) = status("network");
    assert_eq!(state, "failed", "{}", out("network"));
    assert!(reason.starts_with("exit code "), "{reason}");
    assert!(
        out("network").contains("interfaces: lo\n") || out("network").ends_with("interfaces: lo"),
        "only loopback inside: {}",
        out("network")
    );
    assert!(
        ledger.hits().is_empty(),
        "the host's loopback is out of reach"
    );

    // The repository the handlers saw is untouched, and nothing is left running.
    let echo = repo.main_file("handlers/echo.sh").unwrap();
    assert!(!echo.contains("pwned"));
    repo.assert_no_containers();
    let report: Vec<Value> = pass.report["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(report.len(), kinds.len() + 1);
    println!(
        "abusive handlers: {} contained ({}), bystander succeeded; pass took {:.1}s, flood produced {} MiB and kept {} KiB",
        kinds.len(),
        kinds.join(", "),
        took.as_secs_f64(),
        produced >> 20,
        kept >> 10
    );
}
