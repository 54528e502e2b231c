//! The command line as an operator or an agent uses it.

use crate::common::{codex, docker, root};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn version_and_schema() {
    let v = codex(&["--version"]);
    assert!(v.status.success());
    assert_eq!(
        stdout(&v).trim(),
        format!("codex-runner {}", env!("CARGO_PKG_VERSION"))
    );
    let s = codex(&["schema"]);
    assert!(s.status.success());
    let schema: serde_json::Value = serde_json::from_str(&stdout(&s)).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["required"][0], "kind");
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn handlers_list_shows_the_template_handlers() {
    let o = codex(&["handlers", "list", "--repo", root().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(
        rows.iter().any(|r| r.starts_with("deploy ")
            && r.contains("build: containers/deploy")
            && r.contains("{{ params.environment }}/{{ params.service }}")),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("backup ") && r.contains("codex-runner/python:3")),
        "{text}"
    );
}

#[test]
fn validate_reports_each_file_and_exits_by_validity() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    for item in ["codex.repo.yaml", "handlers", "containers"] {
        crate::common::sh(
            repo,
            "cp",
            &[
                "-a",
                root().join(item).to_str().unwrap(),
                repo.to_str().unwrap(),
            ],
        );
    }
    std::fs::create_dir_all(repo.join("requests")).unwrap();
    std::fs::write(
        repo.join("requests/good.yaml"),
        "kind: echo\nparams: {message: hi}\n",
    )
    .unwrap();
    let ok = codex(&["validate", "--repo", repo.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert_eq!(stdout(&ok).trim(), "ok   requests/good.yaml (echo on echo)");

    std::fs::write(
        repo.join("requests/bad.yaml"),
        "kind: deploy\nparams:\n  service: Web!\n  version: v1\n  environment: moon\n",
    )
    .unwrap();
    let bad = codex(&["validate", "--repo", repo.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(text.contains("FAIL requests/bad.yaml"), "{text}");
    assert!(
        text.contains("requests/bad.yaml:3:12: `params.service`"),
        "{text}"
    );
    assert!(
        text.contains("requests/bad.yaml:5:16: `params.environment`"),
        "{text}"
    );

    let json = codex(&[
        "validate",
        "--repo",
        repo.to_str().unwrap(),
        "--format",
        "json",
        repo.join("requests/bad.yaml").to_str().unwrap(),
    ]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(
        v["files"].as_array().unwrap().len(),
        1,
        "only the file asked for"
    );
    assert_eq!(v["files"][0]["file"], "requests/bad.yaml");
    assert!(v["files"][0]["violations"].as_array().unwrap().len() >= 2);

    // A handler script without the executable bit breaks the contract, named as such.
    crate::common::sh(repo, "chmod", &["-x", "handlers/echo.sh"]);
    let broken = codex(&[
        "validate",
        "--repo",
        repo.to_str().unwrap(),
        repo.join("requests/good.yaml").to_str().unwrap(),
    ]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stdout(&broken).contains("`handlers/echo.sh` is not executable"),
        "{}",
        stdout(&broken)
    );
}

#[test]
fn dispatch_usage_and_infrastructure_errors_have_documented_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let no_once = codex(&["dispatch", "--repo", "/nonexistent"]);
    assert_eq!(no_once.status.code(), Some(2));
    let missing = tmp.path().join("missing.git");
    let state = tmp.path().join("state");
    let o = codex(&[
        "dispatch",
        "--once",
        "--repo",
        missing.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failed to fetch main"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bad_cfg = tmp.path().join("host.toml");
    std::fs::write(&bad_cfg, "[limits]\nmax_memory = \"lots\"\n").unwrap();
    let o = codex(&[
        "dispatch",
        "--once",
        "--repo",
        "x",
        "--config",
        bad_cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("limits.max_memory"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn selftest_passes_on_a_working_host() {
    docker();
    let tmp = tempfile::tempdir().unwrap();
    let o = codex(&["selftest", "--state-dir", tmp.path().to_str().unwrap()]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    for check in [
        "ok   config",
        "ok   docker: engine",
        "ok   git: libgit2",
        "ok   state dir",
    ] {
        assert!(text.contains(check), "missing {check:?}:\n{text}");
    }
    assert!(text.contains("example images present"), "{text}");
}

#[test]
fn selftest_names_what_is_wrong() {
    let o = codex(&["selftest", "--state-dir", "/proc/codex-cannot-write-here"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("FAIL state dir"), "{text}");
}

#[test]
fn demo_tells_the_whole_story_on_the_local_forge() {
    docker();
    let tmp = tempfile::tempdir().unwrap();
    let o = codex(&["demo", "--dir", tmp.path().to_str().unwrap()]);
    let text = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "codex-runner/validate on PR #1: success",
        "codex-runner/validate on PR #2: failure",
        "annotation requests/deploy-api.yaml:1: unknown kind `deplyo`",
        "codex-runner/deploy-web        completed: success",
        "rollout step 2/2: web updated",
        "3 of 3 requests succeeded; PR #2 stays red and nothing from it ran",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(crate::common::containers_of("demo-runner").is_empty());
}

#[test]
fn git_only_demo_runs_the_loop_without_a_forge() {
    docker();
    let tmp = tempfile::tempdir().unwrap();
    let o = codex(&["demo", "--git-only", "--dir", tmp.path().to_str().unwrap()]);
    let text = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("4 succeeded, 1 rejected, 0 other"), "{text}");
    assert!(
        text.contains("requests/not-merged.yaml on the unmerged branch ran: no"),
        "{text}"
    );
    assert!(text.contains("did you mean `deploy`?"), "{text}");
    assert!(crate::common::containers_of("demo-git-runner").is_empty());
}
