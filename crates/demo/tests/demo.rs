//! The demo, end to end, as `scripts/demo.sh` runs it: real git, real Docker, the local forge.

use std::process::Command;

/// Docker answers, and the example images are built (as the root crate's tests ensure).
fn docker() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let ping = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .expect("the demo needs the docker CLI");
    assert!(
        ping.status.success(),
        "the demo needs a running Docker engine: {}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let built = Command::new("bash")
        .arg("containers/build-images.sh")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
}

fn demo(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_codex-runner-demo"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn containers_of(runner: &str) -> String {
    let filter = format!("label=io.codex-runner.runner={runner}");
    let o = Command::new("docker")
        .args(["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn the_demo_tells_the_whole_story_on_the_local_forge() {
    docker();
    let tmp = tempfile::tempdir().unwrap();
    let (code, text, stderr) = demo(&["--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}\n{stderr}");
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
    assert_eq!(containers_of("demo-runner"), "");
}

#[test]
fn the_git_only_demo_runs_the_loop_without_a_forge() {
    docker();
    let tmp = tempfile::tempdir().unwrap();
    let (code, text, stderr) = demo(&["--git-only", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}\n{stderr}");
    assert!(text.contains("4 succeeded, 1 rejected, 0 other"), "{text}");
    assert!(
        text.contains("requests/not-merged.yaml on the unmerged branch ran: no"),
        "{text}"
    );
    assert!(text.contains("did you mean `deploy`?"), "{text}");
    assert_eq!(containers_of("demo-git-runner"), "");
}
