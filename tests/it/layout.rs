//! Result layouts: a flat repository moves to the sharded layout and back through
//! `migrate-layout`, nothing runs twice, and `logs ID` reads a request's results in either.

use std::collections::BTreeMap;

use crate::common::{archived_path, codex, docker, log_path, status_path, Repo};

/// Every result file on main (under logs/ and processed/), by id and kind, with its blob.
fn results(repo: &Repo) -> BTreeMap<(String, String), String> {
    let listing = crate::common::sh(
        &repo.origin,
        "git",
        &["ls-tree", "-r", "main", "logs/", "processed/"],
    );
    listing
        .lines()
        .filter_map(|l| {
            let (meta, path) = l.split_once('\t')?;
            let blob = meta.split_whitespace().nth(2)?.to_string();
            let name = path.rsplit('/').next()?;
            let top = path.split('/').next()?;
            let (id, kind) = [".status.json", ".jsonl", ".yaml"]
                .iter()
                .find_map(|s| Some((name.strip_suffix(s)?, *s)))?;
            Some(((format!("{top}:{id}"), kind.to_string()), blob))
        })
        .collect()
}

fn paths(repo: &Repo) -> Vec<String> {
    crate::common::sh(
        &repo.origin,
        "git",
        &[
            "ls-tree",
            "-r",
            "--name-only",
            "main",
            "logs/",
            "processed/",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn migrate(repo: &Repo, to: &str, extra: &[&str]) -> std::process::Output {
    let work = repo.tmp.path().join("migrate-work");
    let mut args = vec![
        "migrate-layout",
        "--repo",
        repo.origin.to_str().unwrap(),
        "--work-dir",
        work.to_str().unwrap(),
        "--to",
        to,
    ];
    args.extend(extra);
    codex(&args)
}

fn logs(repo: &Repo, id: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["logs", id, "--repo", repo.origin.to_str().unwrap()];
    args.extend(extra);
    codex(&args)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn a_flat_repository_moves_to_shards_and_back_without_running_anything_twice() {
    docker();
    let mut repo = Repo::new("t-layout");
    // A repository from before the layout key: flat.
    let contract = std::fs::read_to_string(repo.work.join("codex.repo.yaml")).unwrap();
    let flat_contract = contract.replace("layout: sharded", "layout: flat");
    assert_ne!(contract, flat_contract, "the template names its layout");
    repo.push_main(
        &[("codex.repo.yaml", flat_contract.as_bytes())],
        "an older repository: flat results",
    );
    repo.merge_pr(&[
        (
            "requests/alpha.yaml",
            b"kind: echo\nparams: {message: one}\n",
        ),
        (
            "requests/beta.yaml",
            b"kind: echo\nparams: {message: two}\n",
        ),
        ("requests/broken.yaml", b"kind: echo\nparams: {nope: 1}\n"),
    ]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states().len(), 3, "{}", pass.stderr);
    assert!(repo.main_file("logs/alpha.jsonl").is_some());
    assert!(repo.main_file("processed/broken.yaml").is_some());
    let flat = results(&repo);
    assert_eq!(flat.len(), 9, "{flat:?}");

    // A dry run says what would move and changes nothing.
    let before = repo.main_commits();
    let dry = migrate(&repo, "sharded", &["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let said = text(&dry.stdout);
    assert!(
        said.contains(&format!("logs/alpha.jsonl -> {}", log_path("alpha"))),
        "{said}"
    );
    assert!(said.contains("would move 9 file(s)"), "{said}");
    assert_eq!(repo.main_commits(), before);

    // The move: one commit, every result where the sharded layout puts it, the same blobs.
    let out = migrate(&repo, "sharded", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("moved 9 file(s)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(repo.main_commits(), before + 1);
    assert_eq!(results(&repo), flat, "same files, same contents");
    for id in ["alpha", "beta", "broken"] {
        assert!(repo.main_file(&status_path(id)).is_some(), "{id}");
        assert!(repo.main_file(&log_path(id)).is_some(), "{id}");
        assert!(repo.main_file(&archived_path(id)).is_some(), "{id}");
    }
    let now = paths(&repo);
    assert!(now.contains(&"logs/.gitkeep".to_string()), "{now:?}");
    assert!(
        !now.iter().any(|p| p.starts_with("logs/alpha")),
        "nothing flat is left: {now:?}"
    );
    let contract = repo.main_file("codex.repo.yaml").unwrap();
    assert!(contract.contains("  layout: sharded\n"), "{contract}");
    assert!(
        contract.contains("# Every key is documented"),
        "comments kept"
    );

    // Nothing runs again; a new request lands in its shard.
    let again = repo.dispatch(&[]).ok();
    assert!(again.states().is_empty(), "{:?}", again.report);
    repo.merge_pr(&[(
        "requests/gamma.yaml",
        b"kind: echo\nparams: {message: three}\n",
    )]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states()["gamma"], "succeeded");
    assert!(repo.main_file(&log_path("gamma")).is_some());
    assert!(repo.main_file("logs/gamma.jsonl").is_none());

    // A result an older runner wrote flat after the move is still found: the same id again
    // is a duplicate, not a second run.
    let alpha_status = repo.main_file(&status_path("alpha")).unwrap();
    repo.push_main(
        &[
            (
                "processed/late.yaml",
                b"kind: echo\nparams: {message: late}\n",
            ),
            (
                "logs/late.status.json",
                alpha_status.replace("alpha", "late").as_bytes(),
            ),
        ],
        "a straggler in the old layout",
    );
    repo.merge_pr(&[(
        "requests/late.yaml",
        b"kind: echo\nparams: {message: late}\n",
    )]);
    let pass = repo.dispatch(&[]).ok();
    let states = pass.states();
    assert!(!states.contains_key("late"), "{states:?}");
    assert_eq!(
        states.values().filter(|s| *s == "rejected").count(),
        1,
        "{states:?}"
    );

    // logs: the status and the output, from either layout.
    let out = logs(&repo, "alpha", &[]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.starts_with("alpha: succeeded (exit 0)"), "{shown}");
    assert!(shown.contains(&log_path("alpha")), "{shown}");
    assert!(shown.contains("| message: one"), "{shown}");
    let out = logs(&repo, "late", &["--status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("logs/late.status.json"));
    let out = logs(&repo, "broken", &["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"]["state"], "rejected");
    assert_eq!(doc["archived_path"], archived_path("broken").as_str());
    assert!(doc["log"].as_array().is_some_and(|l| !l.is_empty()));
    let out = logs(&repo, "nobody", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&status_path("nobody")) && err.contains("logs/nobody.status.json"),
        "{err}"
    );
    repo.merge_pr(&[(
        "requests/waiting.yaml",
        b"kind: echo\nparams: {message: w}\n",
    )]);
    let out = logs(&repo, "waiting", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("requests/waiting.yaml is still in the inbox"),
        "{}",
        text(&out.stderr)
    );

    // And back: flat again, every file where it was, then nothing left to do.
    let out = migrate(&repo, "flat", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let round = results(&repo);
    for (key, blob) in &flat {
        assert_eq!(round.get(key), Some(blob), "{key:?}");
    }
    assert!(repo.main_file("logs/alpha.jsonl").is_some());
    assert!(repo.main_file("logs/gamma.status.json").is_some());
    assert!(repo
        .main_file("codex.repo.yaml")
        .unwrap()
        .contains("  layout: flat\n"));
    let commits = repo.main_commits();
    let out = migrate(&repo, "flat", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("nothing to move"));
    assert_eq!(repo.main_commits(), commits);
    repo.assert_no_containers();
}
