//! Hostile input: a corpus of bad requests and broken repository states. Each is rejected
//! with a message that names its file, nothing is executed, and the runner goes on with the
//! next request. (Handlers that abuse their container are in `tests/it/abuse.rs`.)

use crate::common::{archived_path, docker, root, Repo};

use std::path::Path;

/// `tests/corpus/requests.expected`: (file, rule, line).
fn expected() -> Vec<(String, String, Option<u64>)> {
    let text = std::fs::read_to_string(root().join("tests/corpus/requests.expected")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad line in requests.expected: {l}");
            (f[0].to_string(), f[1].to_string(), f[2].parse().ok())
        })
        .collect()
}

/// The same corpus straight through the planner, in-process: the rejection rules hold on
/// their own, without git, Docker or a runner process, and a good request beside them is the
/// only one planned to run.
#[test]
fn the_planner_alone_refuses_every_hostile_request_as_listed() {
    use codex_runner::contract::handlers::HandlerIndex;
    use codex_runner::plan::{plan, Action, Done, EntryContent, InboxEntry};

    let index_bytes = std::fs::read(root().join("handlers/index.yml")).unwrap();
    let index = HandlerIndex::parse(&index_bytes).unwrap();
    let mut cases = expected();
    cases.push(("zz-good.yaml".into(), String::new(), None));
    let entries: Vec<InboxEntry> = cases
        .iter()
        .enumerate()
        .map(|(i, (file, _, _))| {
            let bytes = match file.as_str() {
                "zz-good.yaml" => {
                    b"kind: echo\nparams: {message: the next request runs}\n".to_vec()
                }
                _ => std::fs::read(root().join("tests/corpus/requests").join(file)).unwrap(),
            };
            InboxEntry {
                path: format!("requests/{file}"),
                content: EntryContent::Blob(bytes),
                object: format!("{i:040x}"),
                commit: ("c0ffee".repeat(6) + "c0ff").parse().expect("a commit id"),
                order: 0,
                code_changes: Vec::new(),
            }
        })
        .collect();
    let planned = plan(&entries, |_| Ok(&index), |_| Done::No);
    assert_eq!(planned.items.len(), cases.len(), "{:?}", planned.ignored);
    for (file, rule, line) in &cases {
        let path = format!("requests/{file}");
        let item = planned.items.iter().find(|i| i.file == path).unwrap();
        match (&item.action, rule.as_str()) {
            (Action::Run(r), "") => assert_eq!(r.request.kind, "echo"),
            (Action::Reject(v), rule) if !rule.is_empty() => {
                assert_eq!(v[0].file, path, "{path} is named: {}", v[0]);
                assert_eq!(&*v[0].rule, rule, "{path}: {}", v[0]);
                if let Some(l) = line {
                    assert_eq!(v[0].line, Some(*l as usize), "{path}: {}", v[0]);
                }
            }
            (action, rule) => panic!("{path}: expected `{rule}`, planned {action:?}"),
        }
    }
}

#[test]
fn every_hostile_request_is_rejected_naming_its_file_and_the_next_one_runs() {
    docker();
    let mut repo = Repo::new("t-hostile");
    let mut cases: Vec<(String, String, Option<u64>)> = expected()
        .into_iter()
        .map(|(f, r, l)| (format!("requests/{f}"), r, l))
        .collect();
    let mut files: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(path, _, _)| {
            (
                path.clone(),
                std::fs::read(root().join("tests/corpus").join(path)).unwrap(),
            )
        })
        .collect();
    // Cases made here rather than committed: too big, or names a file system keeps badly.
    let mut huge = b"kind: echo\nparams:\n  message: |\n".to_vec();
    while huge.len() <= 1 << 20 {
        huge.extend_from_slice(
            b"    0123456789012345678901234567890123456789012345678901234567890123\n",
        );
    }
    let valid = b"kind: echo\nparams: {message: x}\n".to_vec();
    for (name, bytes, rule) in [
        ("huge.yaml", huge, "file-too-large"),
        ("-rf.yaml", valid.clone(), "invalid-id"),
        ("a b.yaml", valid.clone(), "invalid-id"),
        ("\u{fc}ber.yaml", valid.clone(), "invalid-id"),
        ("new\nline.yaml", valid.clone(), "invalid-id"),
        ("..yaml", valid.clone(), "invalid-id"),
        ("$(reboot).yaml", valid.clone(), "invalid-id"),
        ("dir.yaml/inner.yaml", valid.clone(), "not-regular-file"),
    ] {
        let file = format!("requests/{name}");
        let listed = if name.contains('/') {
            "requests/dir.yaml".to_string()
        } else {
            file.clone()
        };
        cases.push((listed, rule.to_string(), None));
        files.push((file, bytes));
    }
    files.push((
        "requests/zz-good.yaml".into(),
        b"kind: echo\nparams: {message: the next request runs}\n".to_vec(),
    ));
    // Links in the inbox: to the handler index, out of the repository, nowhere; and a hard
    // link, which git stores as a copy of what it points at.
    let merge = repo.merge_pr_with(&crate::common::borrowed(&files), |r| {
        let inbox = r.work.join("requests");
        for (name, target) in [
            ("link-index.yaml", "../handlers/index.yml"),
            ("link-passwd.yaml", "/etc/passwd"),
            ("link-dangling.yaml", "nothing-here.yaml"),
        ] {
            std::os::unix::fs::symlink(target, inbox.join(name)).unwrap();
        }
        std::fs::hard_link(
            r.work.join("handlers/index.yml"),
            inbox.join("hardlink.yaml"),
        )
        .unwrap();
        r.git(&["add", "-A"]);
        // A submodule (gitlink) named like a request.
        let head = r.git(&["rev-parse", "HEAD"]);
        r.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{},requests/submodule.yaml", head.trim()),
        ]);
    });
    for (name, rule) in [
        ("link-index.yaml", "not-regular-file"),
        ("link-passwd.yaml", "not-regular-file"),
        ("link-dangling.yaml", "not-regular-file"),
        ("hardlink.yaml", "unknown-field"),
        ("submodule.yaml", "not-regular-file"),
    ] {
        cases.push((format!("requests/{name}"), rule.to_string(), None));
    }
    assert!(
        cases.len() >= 70,
        "the corpus holds {} requests",
        cases.len()
    );

    let pass = repo.dispatch(&[]).ok();
    let by_file = |file: &str| pass.by_file(file);
    for (file, rule, line) in &cases {
        let st = by_file(file);
        assert_eq!(st["state"], "rejected", "{file:?}: {st}");
        let id = st["id"].as_str().unwrap();
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !id.starts_with('.'),
            "{file:?} got a safe id: {id:?}"
        );
        let log = repo.log(id);
        assert!(
            !log.iter().any(|e| e["event"] == "started"),
            "{file:?} must not run"
        );
        let violations = log.iter().find(|e| e["event"] == "rejected").unwrap()["violations"]
            .as_array()
            .unwrap()
            .clone();
        let first = &violations[0];
        assert_eq!(first["file"], file.as_str(), "{file:?} is named: {first}");
        assert_eq!(first["rule"], rule.as_str(), "{file:?}: {first}");
        if let Some(l) = line {
            assert_eq!(first["line"], *l, "{file:?}: {first}");
        }
        let message = first["message"].as_str().unwrap();
        assert!(
            !message.is_empty() && message.chars().count() <= 600,
            "{file:?}: a short clear message: {message}"
        );
        assert!(
            violations.len() <= 21,
            "{file:?}: {} violations listed",
            violations.len()
        );
        let status = repo.status(id);
        assert_eq!(status["file"], file.as_str());
        assert!(
            repo.main_file(&archived_path(id)).is_some()
                || file == "requests/dir.yaml"
                || file == "requests/submodule.yaml",
            "{file:?} moved out of the inbox as {id}"
        );
    }
    assert_eq!(by_file("requests/zz-good.yaml")["state"], "succeeded");
    assert!(repo
        .output("zz-good")
        .contains(&"message: the next request runs".to_string()));
    println!(
        "hostile requests: {} rejected, each naming its file, none run; merge {merge}",
        cases.len()
    );
    repo.assert_no_containers();

    // A request brought together with a change to the handler it would run.
    let echo = std::fs::read_to_string(root().join("handlers/echo.sh")).unwrap();
    let evil = echo.replace("echo \"done\"", "echo \"done\"; echo pwned");
    assert_ne!(echo, evil);
    repo.merge_pr(&[
        ("handlers/echo.sh", evil.as_bytes()),
        (
            "requests/sneaky.yaml",
            b"kind: echo\nparams: {message: sneaky}\n",
        ),
    ]);
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states()["sneaky"], "rejected");
    let log = repo.log("sneaky");
    let v = &log.iter().find(|e| e["event"] == "rejected").unwrap()["violations"][0];
    assert_eq!(
        (v["rule"].as_str(), v["file"].as_str()),
        (Some("handler-change"), Some("requests/sneaky.yaml")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("handlers/echo.sh"),
        "{v}"
    );
    assert!(!log.iter().any(|e| e["event"] == "started"));
}

/// Break the repository on main with `mutate`, run a pass, check it refuses naming `expect`,
/// then revert.
fn broken_state(repo: &Repo, name: &str, mutate: impl FnOnce(&Path), expect: &[&str]) {
    repo.sync();
    mutate(&repo.work);
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", &format!("break: {name}")]);
    repo.git(&["push", "-q", "origin", "main"]);
    let before = repo.main_commits();
    let pass = repo.dispatch(&[]);
    assert_eq!(pass.code, 3, "{name}: exit code\n{}", pass.stderr);
    for e in expect {
        assert!(
            pass.stderr.contains(e),
            "{name}: the error names `{e}`:\n{}",
            pass.stderr
        );
    }
    assert!(
        pass.stderr.contains("nothing ran"),
        "{name}: {}",
        pass.stderr
    );
    assert_eq!(repo.main_commits(), before, "{name}: nothing pushed");
    assert!(
        repo.main_file("requests/waiting.yaml").is_some(),
        "{name}: the request waits"
    );
    repo.git(&["revert", "--no-edit", "HEAD"]);
    repo.git(&["push", "-q", "origin", "main"]);
}

fn edit(path: &str, f: impl FnOnce(String) -> String) -> impl FnOnce(&Path) {
    let path = path.to_string();
    move |work: &Path| {
        let p = work.join(&path);
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        std::fs::write(p, f(text)).unwrap();
    }
}

fn write(path: &str, bytes: &'static [u8]) -> impl FnOnce(&Path) {
    let path = path.to_string();
    move |work: &Path| {
        let p = work.join(&path);
        if p.is_symlink() || p.is_file() {
            std::fs::remove_file(&p).unwrap();
        }
        std::fs::write(p, bytes).unwrap()
    }
}

const INDEX: &str = "handlers/index.yml";
const CONFIG: &str = "codex.repo.yaml";

/// The `echo:` entry with `line` added to it.
fn echo_with(line: &'static str) -> impl FnOnce(&Path) {
    edit(INDEX, move |t| {
        t.replace(
            "    run: handlers/echo.sh\n",
            &format!("    run: handlers/echo.sh\n{line}\n"),
        )
    })
}

fn echo_run(run: &'static str) -> impl FnOnce(&Path) {
    edit(INDEX, move |t| {
        t.replace("    run: handlers/echo.sh\n", &format!("    run: {run}\n"))
    })
}

fn config_key(key: &'static str, value: &'static str) -> impl FnOnce(&Path) {
    edit(CONFIG, move |t| {
        let mut out = String::new();
        let mut found = false;
        for line in t.lines() {
            if line.trim_start().starts_with(&format!("{key}:")) {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}{key}: {value}\n"));
                found = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(found, "no `{key}` in codex.repo.yaml");
        out
    })
}

#[test]
fn every_broken_repository_state_stops_the_pass_and_names_the_file() {
    docker();
    let mut repo = Repo::new("t-broken-states");
    repo.merge_pr(&[(
        "requests/waiting.yaml",
        b"kind: echo\nparams: {message: waited for a fixed repository}\n",
    )]);
    let mut tried = 0;
    let mut case = |name: &str, mutate: Box<dyn FnOnce(&Path)>, expect: &[&str]| {
        broken_state(&repo, name, mutate, expect);
        tried += 1;
    };
    // handlers/index.yml
    case(
        "index not YAML",
        Box::new(write(INDEX, b"handlers: {\n")),
        &["handlers/index.yml", "yaml-syntax"],
    );
    case(
        "index empty",
        Box::new(write(INDEX, b"")),
        &["handlers/index.yml"],
    );
    case(
        "index a list",
        Box::new(write(INDEX, b"- echo\n")),
        &["handlers/index.yml"],
    );
    case(
        "handlers a list",
        Box::new(write(INDEX, b"handlers: [echo]\n")),
        &["handlers/index.yml"],
    );
    case(
        "index not UTF-8",
        Box::new(write(
            INDEX,
            b"handlers:\n  echo:\n    run: handlers/\xe9.sh\n",
        )),
        &["handlers/index.yml:3", "not-utf8"],
    );
    case(
        "index with a BOM",
        Box::new(edit(INDEX, |t| format!("\u{feff}{t}"))),
        &["handlers/index.yml:1:1", "bom"],
    );
    case(
        "index alias bomb",
        Box::new(edit(INDEX, |t| {
            // Inside the echo entry's params schema, which is free-form YAML.
            let mut bomb =
                String::from("    params:\n      x-a: &a [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..10u8 {
                let (p, c) = ((b'a' + i - 1) as char, (b'a' + i) as char);
                bomb.push_str(&format!(
                    "      x-{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                ));
            }
            t.replacen("    params:\n", &bomb, 1)
        })),
        &["handlers/index.yml", "alias-limit"],
    );
    case(
        "index cycle through an anchor",
        Box::new(write(INDEX, b"handlers: &h\n  echo: *h\n")),
        &["handlers/index.yml"],
    );
    case(
        "index duplicate handler",
        Box::new(edit(INDEX, |t| {
            t + "\n  echo:\n    run: handlers/echo.sh\n    image: codex-runner/busybox:1\n"
        })),
        &["handlers/index.yml", "duplicate-key"],
    );
    case(
        "index unknown field",
        Box::new(echo_with("    colour: red")),
        &["handlers/index.yml:", "colour"],
    );
    case(
        "index tag",
        Box::new(echo_with("    network: !!str none")),
        &["handlers/index.yml:", "yaml-tag"],
    );
    case(
        "run escapes with ..",
        Box::new(echo_run("../../bin/sh")),
        &["handlers/index.yml:", "invalid-run"],
    );
    case(
        "run absolute",
        Box::new(echo_run("/bin/sh")),
        &["handlers/index.yml:", "invalid-run"],
    );
    case(
        "run through handlers/..",
        Box::new(echo_run("handlers/../codex.repo.yaml")),
        &["handlers/index.yml:", "invalid-run"],
    );
    case(
        "run outside handlers/",
        Box::new(echo_run("requests/waiting.yaml")),
        &["handlers/index.yml:", "invalid-run"],
    );
    case(
        "run the index itself",
        Box::new(echo_run("handlers/index.yml")),
        &["handlers/index.yml", "not-executable"],
    );
    case(
        "run a directory",
        Box::new(echo_run("handlers/")),
        &["handlers/index.yml:", "invalid-run"],
    );
    case(
        "script missing",
        Box::new(echo_run("handlers/nope.sh")),
        &["handlers/index.yml", "missing-script"],
    );
    case(
        "script not executable",
        Box::new(|w: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                w.join("handlers/echo.sh"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }),
        &["handlers/index.yml", "not-executable"],
    );
    case(
        "script a symlink out",
        Box::new(|w: &Path| {
            std::fs::remove_file(w.join("handlers/echo.sh")).unwrap();
            std::os::unix::fs::symlink("/bin/sh", w.join("handlers/echo.sh")).unwrap();
        }),
        &["handlers/index.yml", "symlink"],
    );
    case(
        "index a symlink",
        Box::new(|w: &Path| {
            std::fs::rename(w.join(INDEX), w.join("handlers/real.yml")).unwrap();
            std::os::unix::fs::symlink("real.yml", w.join(INDEX)).unwrap();
        }),
        &["handlers/index.yml"],
    );
    case(
        "index missing",
        Box::new(|w: &Path| std::fs::remove_file(w.join(INDEX)).unwrap()),
        &["handlers/index.yml"],
    );
    case(
        "image and build",
        Box::new(echo_with("    build: deploy")),
        &["handlers/index.yml:", "image-and-build"],
    );
    case(
        "build without Dockerfile",
        Box::new(edit(INDEX, |t| {
            t.replace("build: deploy", "build: nowhere")
        })),
        &["handlers/index.yml", "missing-dockerfile"],
    );
    case(
        "build escapes containers/",
        Box::new(edit(INDEX, |t| {
            t.replace("build: deploy", "build: ../handlers")
        })),
        &["handlers/index.yml:", "invalid-build"],
    );
    case(
        "invalid kind name",
        Box::new(edit(INDEX, |t| t.replace("  echo:\n", "  Echo Kind:\n"))),
        &["handlers/index.yml:", "invalid-kind"],
    );
    case(
        "params schema does not compile",
        Box::new(edit(INDEX, |t| {
            t.replace(
                "message: { type: string, maxLength: 2000 }",
                "message: { type: 12 }",
            )
        })),
        &["handlers/index.yml:", "invalid-schema"],
    );
    case(
        "params schema with a remote $ref",
        Box::new(edit(INDEX, |t| {
            t.replace(
                "message: { type: string, maxLength: 2000 }",
                "message: { $ref: \"http://127.0.0.1:9/schema.json\" }",
            )
        })),
        &["handlers/index.yml:", "invalid-schema"],
    );
    case(
        "bad resource template",
        Box::new(echo_with("    resource: \"{{ nope }}\"")),
        &["handlers/index.yml:", "invalid-resource"],
    );
    case(
        "bridge network",
        Box::new(echo_with("    network: bridge")),
        &["handlers/index.yml:", "invalid-network"],
    );
    case(
        "bad timeout",
        Box::new(edit(INDEX, |t| {
            t.replacen("timeout: 2m", "timeout: soon", 1)
        })),
        &["handlers/index.yml:", "invalid-timeout"],
    );
    case(
        "bad memory",
        Box::new(echo_with("    limits: {memory: lots}")),
        &["handlers/index.yml:", "invalid-limit"],
    );
    case(
        "bad user",
        Box::new(echo_with("    limits: {user: root}")),
        &["handlers/index.yml:", "invalid-limit"],
    );
    case(
        "reserved env",
        Box::new(echo_with("    env: {CODEX_REQUEST_ID: forged}")),
        &["handlers/index.yml:", "invalid-env"],
    );
    case(
        "bad secret delivery",
        Box::new(echo_with("    secrets: {TOKEN: stdout}")),
        &["handlers/index.yml:", "invalid-secret"],
    );
    // codex.repo.yaml, each field
    case(
        "config not YAML",
        Box::new(write(CONFIG, b"repo: {\n")),
        &["codex.repo.yaml", "yaml-syntax"],
    );
    case(
        "config unknown key",
        Box::new(edit(CONFIG, |t| t + "  colour: red\n")),
        &["codex.repo.yaml:", "colour"],
    );
    case(
        "config duplicate key",
        Box::new(edit(CONFIG, |t| t + "  max_attempts: 2\n")),
        &["codex.repo.yaml:", "duplicate-key"],
    );
    case(
        "purpose missing",
        Box::new(edit(CONFIG, |t| {
            t.replace("  purpose: infrastructure-orchestration\n", "")
        })),
        &["codex.repo.yaml"],
    );
    case(
        "strategy wrong",
        Box::new(config_key("strategy", "push-and-pray")),
        &["codex.repo.yaml:", "strategy"],
    );
    case(
        "trigger path escapes",
        Box::new(config_key("deploy_trigger_path", "../etc/")),
        &["codex.repo.yaml:", "deploy_trigger_path"],
    );
    case(
        "output path is the inbox",
        Box::new(config_key("deploy_output_path", "requests/")),
        &["codex.repo.yaml:", "deploy_output_path"],
    );
    case(
        "processed path is handlers/",
        Box::new(edit(CONFIG, |t| {
            t.replace(
                "  mainline_branch:",
                "  processed_path: handlers/\n  mainline_branch:",
            )
        })),
        &["codex.repo.yaml:", "processed_path"],
    );
    case(
        "mainline branch invalid",
        Box::new(config_key("mainline_branch", "\"-x..y\"")),
        &["codex.repo.yaml:", "mainline_branch"],
    );
    case(
        "enforce merge a string",
        Box::new(config_key("enforce_merge_before_execution", "\"yes\"")),
        &["codex.repo.yaml:"],
    );
    case(
        "cleanup a number",
        Box::new(config_key("cleanup_after_success", "3")),
        &["codex.repo.yaml:"],
    );
    case(
        "on_interrupt unknown",
        Box::new(config_key("on_interrupt", "retry")),
        &["codex.repo.yaml:", "on_interrupt"],
    );
    case(
        "max_attempts zero",
        Box::new(config_key("max_attempts", "0")),
        &["codex.repo.yaml:", "max_attempts"],
    );
    case(
        "max_attempts huge",
        Box::new(config_key("max_attempts", "99999999999")),
        &["codex.repo.yaml:"],
    );
    case(
        "claim_timeout zero",
        Box::new(config_key("claim_timeout", "0s")),
        &["codex.repo.yaml:", "claim_timeout"],
    );
    case(
        "claim_timeout words",
        Box::new(config_key("claim_timeout", "soon")),
        &["codex.repo.yaml:", "claim_timeout"],
    );
    case(
        "allow handler changes a string",
        Box::new(config_key("allow_handler_changes_with_requests", "maybe")),
        &["codex.repo.yaml:"],
    );
    case(
        "config tag",
        Box::new(config_key("max_attempts", "!!int 3")),
        &["codex.repo.yaml:", "yaml-tag"],
    );
    assert!(tried >= 50, "{tried} repository states");

    // Repaired (every break reverted): the request that waited through all of them runs.
    let pass = repo.dispatch(&[]).ok();
    assert_eq!(pass.states()["waiting"], "succeeded", "{}", pass.report);
    println!("broken repository states: {tried}, each refused naming its file; nothing ran until repaired");
    repo.assert_no_containers();
}
