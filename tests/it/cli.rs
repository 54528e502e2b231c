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

    // Outside a repository there is no index to check against, and it says where it looked.
    let nowhere = tempfile::tempdir().unwrap();
    let none = codex(&["validate", "--repo", nowhere.path().to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stdout(&none).contains("[missing-index]") && stdout(&none).contains("--repo"),
        "{}",
        stdout(&none)
    );

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

/// `codex-runner dispatch --once` against `repo` with no log settings but those given.
fn dispatch_logged(
    repo: &crate::common::Repo,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"))
        .args([
            "dispatch",
            "--once",
            "--repo",
            repo.origin.to_str().unwrap(),
        ])
        .args(["--state-dir", repo.state.to_str().unwrap()])
        .args(extra)
        .env_remove("CODEX_LOG")
        .env_remove("RUST_LOG")
        .env_remove("CODEX_RUNNER_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run codex-runner")
}

#[test]
fn the_log_flag_beats_the_environment_and_logs_are_plain_or_json() {
    let repo = crate::common::Repo::new("t-logs");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let said_planning = |o: &std::process::Output| {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        stderr(o).contains("planning pass")
    };
    let quiet = dispatch_logged(&repo, &[], &[("RUST_LOG", "error")]);
    assert!(!said_planning(&quiet), "{}", stderr(&quiet));
    let flag = dispatch_logged(&repo, &["--log", "info"], &[("RUST_LOG", "error")]);
    assert!(
        said_planning(&flag),
        "--log beats RUST_LOG: {}",
        stderr(&flag)
    );
    let env = dispatch_logged(
        &repo,
        &[],
        &[("CODEX_RUNNER_LOG", "info"), ("RUST_LOG", "error")],
    );
    assert!(said_planning(&env), "{}", stderr(&env));
    let over_env = dispatch_logged(&repo, &["--log", "error"], &[("CODEX_LOG", "info")]);
    assert!(!said_planning(&over_env), "{}", stderr(&over_env));
    // Written to a pipe (a file, journald): no colour codes. On a terminal, colour, unless
    // NO_COLOR says otherwise.
    assert!(!stderr(&flag).contains('\x1b'), "{:?}", stderr(&flag));
    let on_a_terminal = |no_color: &str| {
        let line = format!(
            "{} dispatch --once --log info --repo {} --state-dir {}",
            env!("CARGO_BIN_EXE_codex-runner"),
            repo.origin.display(),
            repo.state.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("NO_COLOR", no_color)
            .env_remove("RUST_LOG")
            .env_remove("CODEX_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(on_a_terminal("").contains('\x1b'), "colour on a terminal");
    assert!(!on_a_terminal("1").contains('\x1b'), "NO_COLOR is honoured");

    let json = dispatch_logged(&repo, &["--log-format", "json", "--log", "info"], &[]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let lines: Vec<serde_json::Value> = stderr(&json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "planning pass"),
        "{lines:?}"
    );

    let bad = dispatch_logged(&repo, &["--log", "codex_runner=loudest"], &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("--log `codex_runner=loudest` is not a log filter"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn flags_beat_the_environment_which_beats_the_host_config() {
    docker();
    let mut repo = crate::common::Repo::new("t-precedence");
    let config = repo.tmp.path().join("host.toml");
    std::fs::write(&config, "[runner]\nname = \"from-file\"\n").unwrap();
    let cases = [
        (Some("from-flag"), Some("from-env"), "from-flag"),
        (None, Some("from-env"), "from-env"),
        (None, None, "from-file"),
    ];
    for (n, (flag, env, want)) in cases.into_iter().enumerate() {
        let id = format!("p{n}");
        repo.merge_pr(&[(
            &format!("requests/{id}.yaml"),
            b"kind: echo\nparams: {message: who runs me}\n",
        )]);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"));
        cmd.args([
            "dispatch",
            "--once",
            "--json",
            "--repo",
            repo.origin.to_str().unwrap(),
        ])
        .args(["--state-dir", repo.state.to_str().unwrap()])
        .args(["--log-format", "json", "--log", "info"])
        .env("CODEX_RUNNER_CONFIG", &config)
        .env_remove("CODEX_RUNNER_RUNNER_NAME");
        if let Some(f) = flag {
            cmd.args(["--runner-name", f]);
        }
        if let Some(e) = env {
            cmd.env("CODEX_RUNNER_RUNNER_NAME", e);
        }
        let pass = crate::common::Pass::from(cmd.output().unwrap()).ok();
        assert_eq!(pass.states()[&id], "succeeded");
        // Every log line inside a request names it, its kind and its resource.
        let inside: Vec<serde_json::Value> = pass
            .stderr
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["span"]["name"] == "request")
            .collect();
        assert!(!inside.is_empty(), "{}", pass.stderr);
        for line in &inside {
            assert_eq!(
                (&line["span"]["id"], &line["span"]["kind"]),
                (&serde_json::json!(id), &serde_json::json!("echo")),
                "{line}"
            );
            assert!(line["span"]["resource"].is_string(), "{line}");
        }
        assert_eq!(
            repo.status(&id)["runner"],
            want,
            "flag {flag:?}, env {env:?}"
        );
    }
}

#[test]
fn run_names_the_config_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("etc/runner.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_codex-runner"))
        .arg("run")
        .env("CODEX_RUNNER_CONFIG", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no host config at {}: write one with `codex-runner register`",
            missing.display()
        )),
        "{stderr}"
    );
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line_itself() {
    let bash = codex(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = stdout(&bash);
    for word in [
        "dispatch",
        "install",
        "verify",
        "--runner-name",
        "--metrics-file",
    ] {
        assert!(script.contains(word), "no {word} in the bash completions");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codex-runner.bash");
    std::fs::write(&file, &script).unwrap();
    let parsed = std::process::Command::new("bash")
        .args(["-n", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    for shell in ["zsh", "fish"] {
        assert!(codex(&["completions", shell]).status.success(), "{shell}");
    }

    let pages = dir.path().join("man");
    let out = codex(&["man", "--dir", pages.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let main = std::fs::read_to_string(pages.join("codex-runner.1")).unwrap();
    assert!(
        main.starts_with(".ie") || main.contains(".TH codex-runner 1"),
        "{main}"
    );
    let run = std::fs::read_to_string(pages.join("codex-runner-run.1")).unwrap();
    assert!(run.contains(r"\fB\-\-config\fR"), "{run}");
    assert!(
        run.contains(r"\fBCODEX_RUNNER_CONFIG\fR environment variable"),
        "the page names each flag's variable:\n{run}"
    );
    // --help names each flag's variable.
    let help = stdout(&codex(&["run", "--help"]));
    assert!(help.contains("[env: CODEX_RUNNER_CONFIG=]"), "{help}");
    assert!(pages.join("codex-runner-verify.1").exists());
}
