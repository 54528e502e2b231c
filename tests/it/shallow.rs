//! A new host's first pass over a served remote fetches shallow and deepens only as far as
//! the oldest pending request, and the rules that look at history stay exact.

use std::path::Path;

use crate::common::{codex, docker, sh, GitDaemon, Pass, Repo};

/// `count` commits straight on main (a busy repository's unrelated work).
fn busy(repo: &Repo, count: usize, tag: &str) {
    repo.sync();
    let script = format!(
        "for i in $(seq {count}); do echo \"$i\" > notes-{tag}.txt; git add notes-{tag}.txt; git commit -q -m \"{tag} $i\"; done; git push -q origin main"
    );
    sh(&repo.work, "sh", &["-c", &script]);
}

/// A pass by a runner with nothing of its own yet: a new work and state directory.
fn fresh_pass(repo: &Repo, url: &str, dir: &Path) -> Pass {
    Pass::from(codex(&[
        "dispatch",
        "--once",
        "--json",
        "--repo",
        url,
        "--state-dir",
        dir.to_str().unwrap(),
        "--runner-name",
        &repo.runner,
    ]))
}

/// The commits the mirror under `dir` holds, and whether it is shallow.
fn mirror_of(dir: &Path) -> (usize, bool) {
    let work = dir.join("work");
    let key = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().join("mirror.git").is_dir())
        .expect("a mirror")
        .path();
    let mirror = key.join("mirror.git");
    let count = sh(&mirror, "git", &["rev-list", "--count", "--all"])
        .trim()
        .parse()
        .unwrap();
    (count, mirror.join("shallow").is_file())
}

#[test]
fn a_new_host_fetches_shallow_and_deepens_only_as_far_as_the_oldest_pending_request() {
    docker();
    let mut repo = Repo::new("t-shallow");
    // Finished long ago: a new host must not run it again.
    repo.merge_pr(&[(
        "requests/done.yaml",
        b"kind: echo\nparams: {message: once}\n",
    )]);
    repo.dispatch(&[]).ok();
    assert_eq!(repo.status("done")["state"], "succeeded");
    busy(&repo, 400, "before");
    // Pending: merged 300 commits below the tip; one with a handler change beside it.
    let merge = repo.merge_pr(&[("requests/old.yaml", b"kind: echo\nparams: {message: old}\n")]);
    busy(&repo, 100, "between");
    let mut script = std::fs::read_to_string(repo.work.join("handlers/echo.sh")).unwrap();
    script.push_str("# changed with a request\n");
    let sneaky = repo.merge_pr_with(
        &[(
            "requests/sneaky.yaml",
            b"kind: echo\nparams: {message: sneaky}\n",
        )],
        |r| {
            r.write("handlers/echo.sh", script.as_bytes());
            r.git(&["add", "-A"]);
        },
    );
    busy(&repo, 200, "after");
    let total = repo.main_commits();
    assert!(total > 700, "{total}");

    let daemon = GitDaemon::start(repo.tmp.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let dir = repo.tmp.path().join("new-host");
    let pass = fresh_pass(&repo, &url, &dir).ok();
    let states = pass.states();
    assert_eq!(
        states.get("old").map(String::as_str),
        Some("succeeded"),
        "{states:?}\n{}",
        pass.stderr
    );
    assert_eq!(
        states.get("sneaky").map(String::as_str),
        Some("rejected"),
        "{states:?}"
    );
    assert!(
        !states.contains_key("done"),
        "a finished request never runs again: {states:?}"
    );
    assert_eq!(
        repo.status("old")["commit"],
        merge.as_str(),
        "the exact merge commit"
    );
    assert_eq!(repo.status("sneaky")["commit"], sneaky.as_str());
    assert!(
        repo.status("sneaky")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("handlers/echo.sh")),
        "{}",
        repo.status("sneaky")
    );
    assert!(
        pass.stderr.contains("deepening the mirror"),
        "{}",
        pass.stderr
    );
    let (held, shallow) = mirror_of(&dir);
    assert!(shallow, "the mirror is shallow");
    assert!(held < total, "the mirror holds {held} of {total} commits");

    // The next pass fetches only what is new, and stays shallow.
    repo.merge_pr(&[(
        "requests/next.yaml",
        b"kind: echo\nparams: {message: next}\n",
    )]);
    let pass = fresh_pass(&repo, &url, &dir).ok();
    assert_eq!(
        pass.states().get("next").map(String::as_str),
        Some("succeeded")
    );
    let (after, shallow) = mirror_of(&dir);
    assert!(shallow);
    assert!(after < repo.main_commits(), "{after}");
    repo.assert_no_containers();
}

#[test]
fn a_new_host_with_nothing_old_pending_fetches_only_the_tip() {
    docker();
    let mut repo = Repo::new("t-shallow-tip");
    busy(&repo, 300, "history");
    repo.merge_pr(&[(
        "requests/fresh.yaml",
        b"kind: echo\nparams: {message: hi}\n",
    )]);
    let daemon = GitDaemon::start(repo.tmp.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let dir = repo.tmp.path().join("new-host");
    let pass = fresh_pass(&repo, &url, &dir).ok();
    assert_eq!(
        pass.states().get("fresh").map(String::as_str),
        Some("succeeded")
    );
    assert!(!pass.stderr.contains("deepening"), "{}", pass.stderr);
    let (held, shallow) = mirror_of(&dir);
    assert!(shallow);
    // The first fetch's depth, the result commit and what fetching it brought.
    assert!(held <= 40, "{held} commits of {}", repo.main_commits());
}

#[test]
fn a_new_host_on_a_path_links_the_remotes_objects_instead_of_fetching_them() {
    use std::os::unix::fs::MetadataExt;
    docker();
    let mut repo = Repo::new("t-path-seed");
    busy(&repo, 50, "history");
    // Packed, as a served repository usually is: one pack file to compare.
    sh(&repo.origin, "git", &["repack", "-adq"]);
    repo.merge_pr(&[("requests/here.yaml", b"kind: echo\nparams: {message: hi}\n")]);
    let dir = repo.tmp.path().join("path-host");
    let pass = fresh_pass(&repo, repo.origin.to_str().unwrap(), &dir).ok();
    assert_eq!(
        pass.states().get("here").map(String::as_str),
        Some("succeeded")
    );
    let packs = |objects: &Path| -> Vec<u64> {
        std::fs::read_dir(objects.join("pack"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .map(|e| e.metadata().unwrap().ino())
            .collect()
    };
    let remote = packs(&repo.origin.join("objects"));
    let work = dir.join("work");
    let mirror = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("mirror.git"))
        .find(|p| p.is_dir())
        .expect("a mirror");
    let linked = packs(&mirror.join("objects"));
    assert!(
        remote.iter().any(|ino| linked.contains(ino)),
        "the remote's pack is hard-linked into the mirror: {remote:?} {linked:?}"
    );
    let (held, shallow) = mirror_of(&dir);
    assert!(!shallow, "a path remote's mirror is whole");
    assert!(held >= 50, "{held}");
}
