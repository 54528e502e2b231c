//! `install` and `uninstall`: a hardened unit systemd accepts, a user that can read what it
//! needs and nothing more, and everything taken back but the state.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::docker;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_codex-runner")
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap()
}

#[test]
fn install_writes_a_unit_systemd_accepts_and_uninstall_takes_it_back() {
    docker();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // As /etc and /usr/local/bin are: others may pass through.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = root.join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)).unwrap();
    let private = |name: &str, text: &str| {
        let p = etc.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let secret = private("webhook-secret", "s3cret\n");
    let token = private("token", "ghp_x\n");
    let handler_secret = private("db-password", "hunter2\n");
    let config = private(
        "runner.toml",
        &format!(
            "[runner]\nname = \"it\"\nstate_dir = \"{state}\"\nwork_dir = \"{work}\"\ndrain_timeout = \"5m\"\n\n[limits]\ngrace = \"20s\"\n\n[repository]\nurl = \"https://github.com/acme/ops.git\"\n\n[server]\nwebhook_secret_file = \"{secret}\"\n\n[forge]\napi_url = \"https://api.github.com\"\nrepository = \"acme/ops\"\ntoken_file = \"{token}\"\n\n[secrets]\nDB_PASSWORD = {{ file = \"{hs}\" }}\n",
            state = root.join("state").display(),
            work = root.join("work").display(),
            secret = secret.display(),
            token = token.display(),
            hs = handler_secret.display(),
        ),
    );
    // A copy: the service may not run a binary from a home directory.
    let installed = root.join("bin/codex-runner");
    std::fs::create_dir(root.join("bin")).unwrap();
    std::fs::copy(bin(), &installed).unwrap();
    let user = "codex-runner-it";
    let _ = run("userdel", &[user]); // a leftover of an interrupted run
    let units = root.join("units");
    let out = run(
        bin(),
        &[
            "install",
            "--config",
            config.to_str().unwrap(),
            "--user",
            user,
            "--unit-dir",
            units.to_str().unwrap(),
            "--bin",
            installed.to_str().unwrap(),
            "--no-start",
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("created the system user {user}")),
        "{said}"
    );
    let unit = units.join("codex-runner.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        format!("User={user}"),
        "SupplementaryGroups=docker".to_string(),
        format!(
            "ExecStart={} run --config {}",
            installed.display(),
            config.display()
        ),
        // drain 5m + grace 20s + a minute to push
        "TimeoutStopSec=380s".to_string(),
        "Type=notify".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }

    // systemd reads it without a complaint.
    let verify = run("systemd-analyze", &["verify", unit.to_str().unwrap()]);
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success(), "{complaints}");
    assert!(
        !complaints.contains(unit.to_str().unwrap()),
        "systemd-analyze verify complained about the unit:\n{complaints}"
    );

    // The user reads the config and every credential it names, and owns the state.
    for file in [&config, &secret, &token, &handler_secret] {
        let read = run(
            "runuser",
            &["-u", user, "--", "cat", file.to_str().unwrap()],
        );
        assert!(
            read.status.success(),
            "{user} cannot read {}",
            file.display()
        );
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{} is {mode:o}", file.display());
    }
    for dir in ["state", "work"] {
        let path = root.join(dir).join("probe");
        let wrote = run(
            "runuser",
            &["-u", user, "--", "touch", path.to_str().unwrap()],
        );
        assert!(wrote.status.success(), "{user} cannot write {dir}");
    }

    let out = run(
        bin(),
        &[
            "uninstall",
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-stop",
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unit.exists());
    assert!(
        said.contains(&format!("removed the user {user} install created")),
        "{said}"
    );
    assert!(!run("getent", &["passwd", user]).status.success());
    assert!(root.join("state").is_dir(), "the state stays");
}

#[test]
fn install_refuses_what_would_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("runner.toml");
    let out = run(
        bin(),
        &[
            "install",
            "--config",
            missing.to_str().unwrap(),
            "--no-start",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no host config at {}: write one with `codex-runner register` first",
            missing.display()
        )),
        "{stderr}"
    );
}

#[test]
fn the_package_holds_the_program_its_pages_and_completions_and_dpkg_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh"))
        .env("BIN", bin())
        .env("OUT", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let info = String::from_utf8_lossy(&run("dpkg-deb", &["--field", &deb]).stdout).into_owned();
    for field in [
        "Package: codex-runner",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Recommends: docker.io | docker-ce, git, openssh-client",
    ] {
        assert!(info.lines().any(|l| l == field), "no `{field}` in:\n{info}");
    }
    assert!(info.contains("Depends: libc6"), "{info}");
    // dpkg would install it here (its dependencies hold), without installing it.
    let dry = run("dpkg", &["--dry-run", "--install", &deb]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );

    let root = dir.path().join("root");
    assert!(run("dpkg-deb", &["-x", &deb, root.to_str().unwrap()])
        .status
        .success());
    let installed = root.join("usr/bin/codex-runner");
    let version = run(installed.to_str().unwrap(), &["--version"]);
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    for file in [
        "usr/share/man/man1/codex-runner.1.gz",
        "usr/share/man/man1/codex-runner-install.1.gz",
        "usr/share/bash-completion/completions/codex-runner",
        "usr/share/zsh/vendor-completions/_codex-runner",
        "usr/share/fish/vendor_completions.d/codex-runner.fish",
        "usr/share/doc/codex-runner/copyright",
    ] {
        assert!(root.join(file).is_file(), "the package has no {file}");
    }
}
