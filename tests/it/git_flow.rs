//! What reaches main and what never runs: foreign commits, unmerged branches, the contract keys.

use crate::common::{docker, log_path, sh, status_path, GitDaemon, Repo};

use std::process::Command;
use std::time::{Duration, Instant};

/// Install `script` as the remote's pre-receive hook (it runs for pushes through the daemon).
fn install_hook(repo: &Repo, script: &str) -> std::path::PathBuf {
    let hook = repo.origin.join("hooks/pre-receive");
    std::fs::write(&hook, script).unwrap();
    sh(&repo.origin, "chmod", &["+x", hook.to_str().unwrap()]);
    hook
}

/// On the runner's first push to main, a foreign commit lands there and the push is refused.
const FOREIGN_HOOK: &str = r#"#!/bin/sh
# Only pushes to main (claims under refs/codex/ pass).
grep -q ' refs/heads/main$' || exit 0
marker="$GIT_DIR/foreign-landed"
[ -e "$marker" ] && exit 0
touch "$marker"
unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
old=$(git rev-parse refs/heads/main)
blob=$(echo "written by a human while the runner pushed" | git hash-object -w --stdin)
export GIT_INDEX_FILE="$GIT_DIR/foreign-index"
git read-tree "$old"
git update-index --add --cacheinfo "100644,$blob,docs/foreign.md"
tree=$(git write-tree)
new=$(echo "a foreign commit" | GIT_AUTHOR_NAME=Human GIT_AUTHOR_EMAIL=h@example.invalid GIT_COMMITTER_NAME=Human GIT_COMMITTER_EMAIL=h@example.invalid git commit-tree "$tree" -p "$old")
git update-ref refs/heads/main "$new" "$old"
echo "main moved while you pushed" >&2
exit 1
"#;

#[test]
fn a_foreign_commit_during_the_push_is_kept_and_the_result_replayed() {
    docker();
    let mut repo = Repo::new("t-foreign");
    repo.merge_pr(&[(
        "requests/hello.yaml",
        b"kind: echo\nparams: {message: racing}\n",
    )]);
    install_hook(&repo, FOREIGN_HOOK);
    let daemon = GitDaemon::start(repo.tmp.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let pass = repo.dispatch_url(&url, &[]).ok();
    assert_eq!(pass.states()["hello"], "succeeded");
    assert_eq!(pass.report["commits"][0]["replays"], 1, "{}", pass.report);
    assert!(repo.origin.join("foreign-landed").exists(), "the hook ran");
    // Both survive: the foreign commit is the parent of the runner's.
    assert!(
        repo.main_file("docs/foreign.md").is_some(),
        "foreign commit lost"
    );
    assert!(
        repo.main_file(&log_path("hello")).is_some(),
        "runner's results lost"
    );
    let parents = sh(&repo.origin, "git", &["log", "-2", "--format=%s", "main"]);
    assert_eq!(
        parents.lines().collect::<Vec<_>>(),
        ["codex: hello succeeded", "a foreign commit"]
    );
    repo.assert_no_containers();
}

#[test]
fn a_request_on_an_unmerged_branch_never_runs() {
    docker();
    let repo = Repo::new("t-unmerged");
    repo.sync();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write(
        "requests/sneaky.yaml",
        b"kind: echo\nparams: {message: not reviewed}\n",
    );
    // The branch also tries to lift enforcement for itself.
    let relaxed = std::fs::read_to_string(crate::common::root().join("codex.repo.yaml"))
        .unwrap()
        .replace(
            "enforce_merge_before_execution: true",
            "enforce_merge_before_execution: false",
        );
    repo.write("codex.repo.yaml", relaxed.as_bytes());
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "unreviewed"]);
    repo.git(&["push", "-q", "origin", "feature"]);
    repo.git(&["checkout", "-q", "main"]);

    let pass = repo.dispatch(&[]).ok();
    assert!(pass.states().is_empty(), "{}", pass.report);
    let refused = repo.dispatch(&["--branch", "feature"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("enforce_merge_before_execution"),
        "{}",
        refused.stderr
    );
    assert!(repo.main_file(&log_path("sneaky")).is_none());
    let branch_log = sh(
        &repo.origin,
        "git",
        &["log", "-1", "--format=%s", "feature"],
    );
    assert_eq!(
        branch_log.trim(),
        "unreviewed",
        "nothing was pushed to the branch"
    );

    // Once merged, it runs.
    repo.sync();
    repo.git(&["merge", "-q", "--no-ff", "feature", "-m", "Merge feature"]);
    repo.git(&["push", "-q", "origin", "main"]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states()["sneaky"], "succeeded");
    repo.assert_no_containers();
}

#[test]
fn enforcement_off_on_main_allows_running_a_branch() {
    docker();
    let repo = Repo::new("t-branch");
    let relaxed = std::fs::read_to_string(crate::common::root().join("codex.repo.yaml"))
        .unwrap()
        .replace(
            "enforce_merge_before_execution: true",
            "enforce_merge_before_execution: false",
        );
    repo.push_main(
        &[("codex.repo.yaml", relaxed.as_bytes())],
        "allow staging branches",
    );
    repo.git(&["checkout", "-q", "-b", "staging"]);
    repo.write(
        "requests/try.yaml",
        b"kind: echo\nparams: {message: from staging}\n",
    );
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "try on staging"]);
    repo.git(&["push", "-q", "origin", "staging"]);
    let pass = repo.dispatch(&["--branch", "staging"]).ok();
    assert_eq!(pass.states()["try"], "succeeded");
    let on_staging = sh(
        &repo.origin,
        "git",
        &["show", &format!("staging:{}", status_path("try"))],
    );
    assert!(on_staging.contains("\"succeeded\""));
    assert!(
        repo.main_file(&status_path("try")).is_none(),
        "results go to the branch that ran"
    );
    repo.assert_no_containers();
}

#[test]
fn every_contract_key_has_its_effect() {
    docker();
    let repo = Repo::new("t-contract");
    let config = "repo:\n  purpose: release-train\n  strategy: git-merge-execution\ncodex:\n  deploy_trigger_path: inbox/\n  deploy_output_path: results/\n  processed_path: done/\n  mainline_branch: trunk\n  enforce_merge_before_execution: true\n  cleanup_after_success: false\n";
    // main points at trunk; trunk carries the same contract and the requests.
    repo.push_main(&[("codex.repo.yaml", config.as_bytes())], "move to trunk");
    repo.git(&["checkout", "-q", "-b", "trunk"]);
    repo.write(
        "inbox/ok.yaml",
        b"kind: echo\nparams: {message: on trunk}\n",
    );
    repo.write(
        "inbox/bad.yaml",
        b"kind: echo\nparams: {message: fails, exit: 1}\n",
    );
    repo.write(
        "requests/ignored.yaml",
        b"kind: echo\nparams: {message: old inbox}\n",
    );
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "requests on trunk"]);
    repo.git(&["push", "-q", "origin", "trunk"]);

    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.report["branch"], "trunk");
    let states = pass.states();
    assert_eq!(
        (states["ok"].as_str(), states["bad"].as_str()),
        ("succeeded", "failed")
    );
    assert!(
        !states.contains_key("ignored"),
        "requests/ is not the inbox any more"
    );
    let show = |p: &str| {
        let out = Command::new("git")
            .args([
                "--git-dir",
                repo.origin.to_str().unwrap(),
                "show",
                &format!("trunk:{p}"),
            ])
            .output()
            .unwrap();
        out.status.success()
    };
    assert!(
        show("results/ok.jsonl") && show("results/ok.status.json"),
        "outbox is results/"
    );
    assert!(
        show("inbox/ok.yaml"),
        "cleanup_after_success: false keeps a succeeded request in place"
    );
    assert!(
        !show("inbox/bad.yaml") && show("done/bad.yaml"),
        "a failed request always moves, to processed_path"
    );
    // The request left in place is done: a second pass runs nothing.
    let pass = repo.dispatch(&[]).ok();
    assert!(pass.states().is_empty(), "{}", pass.report);
    repo.assert_no_containers();
}

#[test]
fn a_broken_contract_file_is_named_and_nothing_runs() {
    docker();
    let mut repo = Repo::new("t-badcfg");
    repo.merge_pr(&[
        ("requests/wait.yaml", b"kind: echo\nparams: {message: x}\n"),
        (
            "codex.repo.yaml",
            b"repo:\n  purpose: infrastructure-orchestration\n  strategy: yolo\n",
        ),
    ]);
    let pass = repo.dispatch(&[]);
    assert_eq!(pass.code, 3, "{}", pass.stderr);
    assert!(
        pass.stderr.contains("codex.repo.yaml:3:13")
            && pass.stderr.contains("unsupported-strategy"),
        "{}",
        pass.stderr
    );
    assert!(repo.main_file("requests/wait.yaml").is_some());
}

#[test]
fn results_wait_out_an_unreachable_remote_and_are_published_once_it_is_back() {
    docker();
    let mut repo = Repo::new("t-unreachable");
    repo.add_handler(
        "slow",
        "#!/bin/sh\necho working\nsleep 3\necho done\n",
        "    image: codex-runner/busybox:1\n",
    );
    repo.merge_pr(&[("requests/slow.yaml", b"kind: slow\n")]);
    let daemon = GitDaemon::start(repo.tmp.path());
    let port = daemon.port;
    let url = format!("git://127.0.0.1:{port}/origin.git");
    let flags = ["--push-attempts", "2"];
    let child = repo
        .dispatch_command(&url, &flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The remote goes away while the handler runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::common::containers_of("t-unreachable").is_empty() {
        assert!(Instant::now() < deadline, "the handler never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(daemon);
    let lost = crate::common::Pass::from(child.wait_with_output().unwrap());
    assert_eq!(
        lost.code, 4,
        "exit code 4 says git failed:\n{}",
        lost.stderr
    );
    assert!(repo.main_file(&log_path("slow")).is_none());
    // Still away: the next pass says so and runs nothing.
    let away = repo.dispatch_url(&url, &flags);
    assert_eq!(away.code, 4, "{}", away.stderr);

    let _back = GitDaemon::start_on(repo.tmp.path(), port);
    let pass = repo.dispatch_url(&url, &flags).ok();
    assert_eq!(
        pass.states()["slow"],
        "succeeded",
        "the kept result is published"
    );
    let log = repo.log("slow");
    let started = log.iter().filter(|e| e["event"] == "started").count();
    assert_eq!(started, 1, "the handler ran once: {log:#?}");
    assert!(repo.output("slow").contains(&"done".to_string()));
    assert!(repo.dispatch_url(&url, &flags).ok().states().is_empty());
    repo.assert_no_containers();
}

#[test]
fn results_wait_out_a_refusing_remote_and_are_published_without_running_again() {
    docker();
    let mut repo = Repo::new("t-refuse");
    repo.merge_pr(&[(
        "requests/once.yaml",
        b"kind: echo\nparams: {message: exactly once}\n",
    )]);
    // main is under maintenance; claims (refs/codex/...) are still taken.
    let hook = install_hook(
        &repo,
        "#!/bin/sh\ngrep -q ' refs/heads/main$' || exit 0\necho 'maintenance: pushes refused' >&2\nexit 1\n",
    );
    let daemon = GitDaemon::start(repo.tmp.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let run = || {
        repo.dispatch_url(
            &url,
            &[
                "--push-attempts",
                "2",
                "--author-name",
                "Ops Bot",
                "--author-email",
                "ops-bot@example.invalid",
            ],
        )
    };
    let refused = run();
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("maintenance: pushes refused")
            || refused.stderr.contains("rejected"),
        "{}",
        refused.stderr
    );
    assert!(repo.main_file(&log_path("once")).is_none());

    std::fs::remove_file(&hook).unwrap();
    let pass = run().ok();
    assert_eq!(
        pass.states()["once"],
        "succeeded",
        "the kept result is published"
    );
    let log = repo.log("once");
    let started = log.iter().filter(|e| e["event"] == "started").count();
    assert_eq!(started, 1, "the handler ran once: {log:#?}");
    let who = sh(
        &repo.origin,
        "git",
        &["log", "-1", "--format=%an <%ae> / %cn <%ce>", "main"],
    );
    assert_eq!(
        who.trim(),
        "Ops Bot <ops-bot@example.invalid> / Ops Bot <ops-bot@example.invalid>"
    );
    // And a third pass has nothing left to do.
    assert!(run().ok().states().is_empty());
    repo.assert_no_containers();
}

#[test]
fn a_remote_that_refuses_claims_runs_nothing_until_it_takes_them() {
    docker();
    let mut repo = Repo::new("t-noclaim");
    repo.merge_pr(&[(
        "requests/held.yaml",
        b"kind: echo\nparams: {message: only with a claim}\n",
    )]);
    let hook = install_hook(
        &repo,
        "#!/bin/sh\ngrep -q ' refs/codex/' || exit 0\necho 'custom refs are not allowed here' >&2\nexit 1\n",
    );
    let daemon = GitDaemon::start(repo.tmp.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let refused = repo.dispatch_url(&url, &[]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("refused the claim")
            && refused.stderr.contains("refs/codex/claims/main/held"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("\"started\""),
        "{}",
        refused.stderr
    );
    assert!(repo.main_file("requests/held.yaml").is_some());
    repo.assert_no_containers();

    std::fs::remove_file(&hook).unwrap();
    let pass = repo.dispatch_url(&url, &[]).ok();
    assert_eq!(pass.states()["held"], "succeeded");
}

#[test]
fn a_request_runs_the_handler_it_was_merged_with() {
    docker();
    let mut repo = Repo::new("t-pinned");
    repo.merge_pr(&[(
        "requests/early.yaml",
        b"kind: echo\nparams: {message: early}\n",
    )]);
    // The handler changes on main before the runner gets to the request.
    let echo = std::fs::read_to_string(crate::common::root().join("handlers/echo.sh")).unwrap();
    let v2 = echo.replace("echo \"done\"", "echo \"done (v2)\"");
    assert_ne!(echo, v2);
    repo.merge_pr(&[("handlers/echo.sh", v2.as_bytes())]);
    repo.merge_pr(&[(
        "requests/late.yaml",
        b"kind: echo\nparams: {message: late}\n",
    )]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states().len(), 2, "{}", pass.report);
    let (early, late) = (repo.output("early"), repo.output("late"));
    assert!(
        early.contains(&"done".to_string()),
        "what was reviewed with it: {early:?}"
    );
    assert!(late.contains(&"done (v2)".to_string()), "{late:?}");
    repo.assert_no_containers();
}

#[test]
fn a_runner_leaves_alone_requests_whose_labels_it_does_not_carry() {
    docker();
    let mut repo = Repo::new("t-labels");
    repo.merge_pr(&[
        (
            "requests/gpu.yaml",
            b"kind: echo\nruns-on: [gpu]\nparams: {message: needs a gpu}\n",
        ),
        (
            "requests/any.yaml",
            b"kind: echo\nparams: {message: anywhere}\n",
        ),
    ]);
    let pass = repo.dispatch(&["--labels", "linux"]).ok();
    let states = pass.states();
    assert_eq!(states.get("any").map(String::as_str), Some("succeeded"));
    assert!(!states.contains_key("gpu"), "{states:?}");
    let ignored = pass.report["ignored"].to_string();
    assert!(
        ignored.contains("requests/gpu.yaml") && ignored.contains("label `gpu`"),
        "{ignored}"
    );
    assert!(
        repo.main_file("requests/gpu.yaml").is_some(),
        "left in the inbox for a runner that has the label"
    );

    let pass = repo.dispatch(&["--labels", "linux,gpu"]).ok();
    assert_eq!(pass.states()["gpu"], "succeeded");
    repo.assert_no_containers();
}

/// A queue's claims go in one push, and one refused (someone holds it) does not stop the
/// others; a claims push and a results push carry the deletion of claims whose results are
/// recorded. Over a path and over a git server, each counted as one push.
#[test]
fn several_ref_updates_share_one_push_and_each_lands_or_is_refused_alone() {
    use codex_runner::git::claims::{claim_ref, ClaimAsk, ClaimBody};
    use codex_runner::git::{round_trips, Change, Identity, Mirror};

    let repo = Repo::new("t-one-push");
    let daemon = GitDaemon::start(repo.tmp.path());
    let who = Identity {
        name: "codex-runner".into(),
        email: "runner@example.invalid".into(),
    };
    let urls = [
        ("path", repo.origin.display().to_string()),
        ("git", format!("git://127.0.0.1:{}/origin.git", daemon.port)),
    ];
    for (scheme, url) in urls {
        let work = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(work.path(), &url, None).unwrap();
        mirror.fetch("main").unwrap();
        let r = |id: &str| claim_ref("main", &format!("{scheme}-{id}"));
        let body = |nonce: &str| ClaimBody {
            runner: "r".into(),
            nonce: nonce.into(),
            ..Default::default()
        };
        let held = mirror
            .push_claim(&r("b"), None, &body("another runner"), &who)
            .unwrap()
            .expect("the first claim on b");
        // A claim whose request is recorded: its deletion rides on the next claims push.
        mirror
            .push_claim(&r("done"), None, &body("an earlier pass"), &who)
            .unwrap()
            .expect("the claim on done");
        let ask = |id: &str| ClaimAsk {
            refname: r(id),
            seen: None,
            body: body("ours"),
        };
        let before = round_trips();
        let out = mirror
            .push_claims(&[ask("a"), ask("b"), ask("c")], &who, &[r("done")])
            .unwrap();
        let spent = round_trips() - before;
        assert_eq!((spent.pushes, spent.fetches), (1, 0), "{scheme}");
        assert!(out[0].is_ok() && out[2].is_ok(), "{scheme}: {out:?}");
        assert!(out[1].is_err(), "{scheme}: b is held: {out:?}");
        let on_remote = |id: &str| {
            sh(
                &repo.origin,
                "git",
                &["for-each-ref", "--format=%(objectname)", &r(id)],
            )
            .trim()
            .to_string()
        };
        assert_eq!(on_remote("a"), out[0].clone().unwrap().to_string());
        assert_eq!(
            on_remote("b"),
            held.to_string(),
            "{scheme}: b kept its holder"
        );
        assert_eq!(on_remote("c"), out[2].clone().unwrap().to_string());
        assert_eq!(
            on_remote("done"),
            "",
            "{scheme}: done's claim rode in the claims push"
        );

        let before = round_trips();
        let change = Change::Write {
            path: format!("{scheme}.txt"),
            bytes: b"recorded\n".to_vec(),
        };
        mirror
            .publish_with(
                "main",
                |_, _| Ok(vec![change.clone()]),
                "codex: results",
                &who,
                3,
                &[r("a"), r("c")],
            )
            .unwrap();
        let spent = round_trips() - before;
        assert_eq!((spent.pushes, spent.fetches), (1, 1), "{scheme}");
        assert_eq!(
            repo.main_file(&format!("{scheme}.txt")).as_deref(),
            Some("recorded\n")
        );
        assert_eq!(
            on_remote("a"),
            "",
            "{scheme}: a's claim rode in the results push"
        );
        assert_eq!(
            on_remote("c"),
            "",
            "{scheme}: c's claim rode in the results push"
        );
        assert_eq!(on_remote("b"), held.to_string(), "{scheme}");
    }
}
