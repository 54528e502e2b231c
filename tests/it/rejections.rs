//! Bad requests are rejected with file, position, rule and hint; nothing runs; the pass goes on.

use crate::common::{archived_path, docker, Repo};

fn alias_bomb() -> Vec<u8> {
    let mut s = String::from("kind: echo\nparams:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10u8 {
        let (p, c) = ((b'a' + i - 1) as char, (b'a' + i) as char);
        s.push_str(&format!(
            "  {c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        ));
    }
    s.push_str("  message: boom\n");
    s.into_bytes()
}

#[test]
fn every_bad_request_is_rejected_precisely_and_nothing_runs() {
    docker();
    let mut repo = Repo::new("t-reject");
    let big = {
        let mut s = String::from("kind: echo\nparams:\n  message: |\n");
        while s.len() < 2 << 20 {
            s.push_str(
                "    0123456789012345678901234567890123456789012345678901234567890123456789\n",
            );
        }
        s.into_bytes()
    };
    let bomb = alias_bomb();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "requests/typo.yaml",
            b"kind: deplyo\nparams: {service: web}\n".to_vec(),
        ),
        (
            "requests/params.yaml",
            b"kind: echo\nparams:\n  message: 42\n  colour: red\n".to_vec(),
        ),
        (
            "requests/traversal.yaml",
            b"kind: echo\nid: ../../etc/passwd\nparams: {message: x}\n".to_vec(),
        ),
        ("requests/bomb.yaml", bomb),
        ("requests/huge.yaml", big),
        (
            "requests/latin1.yaml",
            b"kind: echo\nparams:\n  message: caf\xe9\n".to_vec(),
        ),
        (
            "requests/unknown-field.yaml",
            b"kind: echo\nparms: {message: x}\n".to_vec(),
        ),
        (
            "requests/dup-key.yaml",
            b"kind: echo\nkind: deploy\nparams: {message: x}\n".to_vec(),
        ),
        (
            "requests/good.yaml",
            b"kind: echo\nparams: {message: still runs}\n".to_vec(),
        ),
    ];
    let files: Vec<(&str, &[u8])> = cases.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    repo.sync();
    // A symlink in the inbox, pointing at something a handler would love to read.
    std::os::unix::fs::symlink(
        "../handlers/index.yml",
        repo.work.join("requests/link.yaml"),
    )
    .unwrap();
    repo.merge_pr(&files);
    let pass = repo.dispatch(&[]).ok();
    let by_file = |file: &str| pass.by_file(file);
    let expect = [
        (
            "requests/typo.yaml",
            "unknown-kind",
            Some(1),
            "did you mean `deploy`?",
        ),
        (
            "requests/params.yaml",
            "wrong-type",
            Some(3),
            "quote it to make it text: `message: \"42\"`",
        ),
        (
            "requests/traversal.yaml",
            "invalid-id",
            Some(2),
            "such as `etc-passwd`",
        ),
        (
            "requests/bomb.yaml",
            "alias-limit",
            None,
            "instead of using `&` and `*`",
        ),
        (
            "requests/huge.yaml",
            "file-too-large",
            None,
            "keep requests small",
        ),
        ("requests/latin1.yaml", "not-utf8", Some(3), "UTF-8"),
        (
            "requests/unknown-field.yaml",
            "unknown-field",
            Some(2),
            "did you mean `params`?",
        ),
        (
            "requests/dup-key.yaml",
            "duplicate-key",
            Some(2),
            "or line 1",
        ),
        (
            "requests/link.yaml",
            "not-regular-file",
            None,
            "never followed",
        ),
    ];
    for (file, rule, line, hint) in expect {
        let st = by_file(file);
        assert_eq!(st["state"], "rejected", "{file}: {st}");
        let id = st["id"].as_str().unwrap();
        assert!(
            !id.contains('/') && !id.starts_with('.'),
            "safe id for {file}: {id}"
        );
        let log = repo.log(id);
        assert!(
            !log.iter().any(|e| e["event"] == "started"),
            "{file} must not run"
        );
        let v = log.iter().find(|e| e["event"] == "rejected").unwrap()["violations"][0].clone();
        assert_eq!(v["file"], file, "{v}");
        assert_eq!(v["rule"], rule, "{file}: {v}");
        if let Some(l) = line {
            assert_eq!(v["line"], l, "{file}: {v}");
        }
        assert!(
            v["hint"].as_str().unwrap_or_default().contains(hint),
            "{file}: {v}"
        );
        // Moved out of the inbox so it is never retried by accident.
        assert!(repo.main_file(file).is_none(), "{file} still in the inbox");
        assert!(
            repo.main_file(&archived_path(id)).is_some(),
            "{file} not in processed/ as {id}"
        );
    }
    // The params violation lists both problems.
    let params = repo.log(by_file("requests/params.yaml")["id"].as_str().unwrap());
    let rules: Vec<_> = params.iter().find(|e| e["event"] == "rejected").unwrap()["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap().to_string())
        .collect();
    assert!(
        rules.contains(&"unknown-field".to_string()) && rules.contains(&"wrong-type".to_string()),
        "{rules:?}"
    );
    assert_eq!(by_file("requests/good.yaml")["state"], "succeeded");
    assert!(repo
        .output("good")
        .contains(&"message: still runs".to_string()));
    repo.assert_no_containers();
}

#[test]
fn a_reused_id_is_a_duplicate_and_never_runs_twice() {
    docker();
    let mut repo = Repo::new("t-dup");
    repo.merge_pr(&[(
        "requests/first.yaml",
        b"kind: echo\nid: once\nparams: {message: first}\n",
    )]);
    repo.dispatch(&[]).ok();
    assert_eq!(repo.status("once")["state"], "succeeded");
    repo.merge_pr(&[
        (
            "requests/again.yaml",
            b"kind: echo\nid: once\nparams: {message: second}\n",
        ),
        (
            "requests/twin-a.yaml",
            b"kind: echo\nid: twin\nparams: {message: a}\n",
        ),
        (
            "requests/twin-b.yaml",
            b"kind: echo\nid: twin\nparams: {message: b}\n",
        ),
    ]);
    let pass = repo.dispatch(&[]).ok();
    let states = pass.states();
    assert_eq!(states["twin"], "succeeded", "{states:?}");
    let dups: Vec<_> = states
        .iter()
        .filter(|(id, _)| id.contains(".dup-"))
        .collect();
    assert_eq!(dups.len(), 2, "{states:?}");
    assert!(dups.iter().all(|(_, s)| *s == "rejected"));
    assert!(repo.output("once").contains(&"message: first".to_string()));
    assert!(
        repo.output("twin").contains(&"message: a".to_string()),
        "the earlier file runs"
    );
    repo.assert_no_containers();
}

#[test]
fn a_broken_handler_index_stops_the_pass_and_moves_nothing() {
    docker();
    let mut repo = Repo::new("t-index");
    let broken: &[u8] =
        b"handlers:\n  echo:\n    run: ../../bin/sh\n    image: codex-runner/busybox:1\n";
    // Merged while the index was fine; the index breaks afterwards, with a second request.
    repo.merge_pr(&[(
        "requests/waiting.yaml",
        b"kind: echo\nparams: {message: wait for the fix}\n",
    )]);
    repo.merge_pr(&[
        ("handlers/index.yml", broken),
        (
            "requests/with-broken.yaml",
            b"kind: echo\nparams: {message: merged with the breakage}\n",
        ),
    ]);
    let before = repo.main_commits();
    let pass = repo.dispatch(&[]);
    assert_eq!(pass.code, 3, "{}", pass.stderr);
    assert!(
        pass.stderr.contains("handlers/index.yml:3:10") && pass.stderr.contains("invalid-run"),
        "{}",
        pass.stderr
    );
    assert_eq!(repo.main_commits(), before, "nothing pushed");
    assert!(
        repo.main_file("requests/waiting.yaml").is_some(),
        "the request waits for a fixed index"
    );

    // Fixing the index lets the waiting request run with the handlers it was merged with; the
    // one merged together with the broken index is rejected, naming the index's fault.
    let index = std::fs::read(crate::common::root().join("handlers/index.yml")).unwrap();
    repo.merge_pr(&[("handlers/index.yml", &index)]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states()["waiting"], "succeeded");
    assert_eq!(pass.states()["with-broken"], "rejected");
    let rejected = repo.log("with-broken");
    let v = &rejected.iter().find(|e| e["event"] == "rejected").unwrap()["violations"];
    assert_eq!(
        (v[0]["rule"].as_str(), v[1]["rule"].as_str()),
        (Some("broken-index"), Some("invalid-run")),
        "{v}"
    );
    repo.assert_no_containers();
}
