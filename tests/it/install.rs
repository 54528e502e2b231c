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
        "usr/lib/sysusers.d/codex-runner.conf",
    ] {
        assert!(root.join(file).is_file(), "the package has no {file}");
    }
    // The unit it ships is the one `install` writes for the defaults, and not enabled.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/codex-runner.service"))
        .expect("the package has no unit");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/codex-runner.service");
    assert_eq!(unit, std::fs::read_to_string(source).unwrap());
    assert!(
        info.contains("systemd | systemd-standalone-sysusers"),
        "{info}"
    );
    let control = dir.path().join("control");
    assert!(run("dpkg-deb", &["-e", &deb, control.to_str().unwrap()])
        .status
        .success());
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("systemd-sysusers") && !postinst.contains("deb-systemd-invoke start"),
        "postinst should create the user and neither enable nor start the unit:\n{postinst}"
    );
}

/// `docker exec` in `container`; stdout, or a failure naming what was asked.
fn exec(container: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["exec", container];
    all.extend_from_slice(args);
    run("docker", &all)
}

/// A container running systemd as its init, with `dir` mounted at the same path; removed when
/// dropped.
struct Systemd(String);

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.0]);
    }
}

#[test]
fn under_a_real_systemd_the_installed_service_starts_ready_and_stops_clean() {
    docker();
    let repo = crate::common::Repo::new("t-systemd");
    // Outside /tmp, /home and /root, which the unit's PrivateTmp and ProtectHome hide.
    std::fs::create_dir_all("/var/lib/codex-runner-tests").unwrap();
    let base = tempfile::tempdir_in("/var/lib/codex-runner-tests").unwrap();
    let b = base.path();
    std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o755)).unwrap();
    let origin = b.join("origin.git");
    let cloned = run(
        "git",
        &[
            "clone",
            "-q",
            "--bare",
            repo.origin.to_str().unwrap(),
            origin.to_str().unwrap(),
        ],
    );
    assert!(cloned.status.success());
    // The package, as an operator installs it.
    let built = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh"))
        .env("BIN", bin())
        .env("OUT", b)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let installed = std::path::PathBuf::from("/usr/bin/codex-runner");
    std::fs::create_dir(b.join("etc")).unwrap();
    let config = b.join("etc/runner.toml");
    std::fs::write(
        &config,
        format!(
            "[runner]\nname = \"t-systemd\"\nstate_dir = \"{}\"\ndrain_timeout = \"20s\"\n\n[repository]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:8733\"\nmetrics_listen = \"127.0.0.1:8734\"\npoll_interval = \"1h\"\n",
            b.join("state").display(),
            origin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    let name = format!("codex-runner-systemd-{}", std::process::id());
    let mount = format!("{0}:{0}", b.display());
    let started = run(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "-v",
            &mount,
            "codex-runner/systemd:1",
        ],
    );
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _container = Systemd(name.clone());
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let state = text(&exec(&name, &["systemctl", "is-system-running"]));
        if state == "running" || state == "degraded" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "systemd is {state:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let dpkg = exec(&name, &["dpkg", "--install", &deb]);
    assert!(
        dpkg.status.success(),
        "{}",
        String::from_utf8_lossy(&dpkg.stderr)
    );
    let show = |prop: &str| {
        text(&exec(
            &name,
            &[
                "systemctl",
                "show",
                "-p",
                prop,
                "--value",
                "codex-runner.service",
            ],
        ))
    };
    // The package brought its user and a unit systemd reads cleanly, neither enabled nor started.
    let user = exec(&name, &["getent", "passwd", "codex-runner"]);
    assert!(user.status.success(), "the package made no user");
    let packaged = "/usr/lib/systemd/system/codex-runner.service";
    let verify = exec(&name, &["systemd-analyze", "verify", packaged]);
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(
        verify.status.success() && !complaints.contains(packaged),
        "{complaints}"
    );
    // The package's unit (in /lib or /usr/lib, one directory on a merged /usr), disabled.
    let packaged_and_idle = || {
        let fragment = show("FragmentPath");
        assert!(fragment.ends_with(&packaged[4..]), "{fragment}");
        assert_eq!(show("UnitFileState"), "disabled");
        assert_eq!(show("ActiveState"), "inactive");
    };
    packaged_and_idle();
    // systemctl enable --now returns once the Type=notify service said READY=1.
    let inst = exec(
        &name,
        &[
            "codex-runner",
            "install",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(
        inst.status.success(),
        "{}{}",
        text(&inst),
        String::from_utf8_lossy(&inst.stderr)
    );
    assert!(
        text(&inst).contains("enabled and started codex-runner.service")
            && text(&inst).contains("runs as the existing user codex-runner"),
        "{}",
        text(&inst)
    );
    // Its own unit, fitted to the config, stands in front of the package's.
    assert_eq!(
        show("FragmentPath"),
        "/etc/systemd/system/codex-runner.service"
    );
    assert_eq!(show("ActiveState"), "active");
    assert_eq!(show("SubState"), "running");
    assert_eq!(show("User"), "codex-runner");
    assert!(
        show("ExecStart").contains("path=/usr/bin/codex-runner"),
        "{}",
        show("ExecStart")
    );
    assert!(
        show("StatusText").starts_with("waiting; the last pass"),
        "{}",
        show("StatusText")
    );
    // Its watchdog is armed, and `status` (as an operator would run it) finds the daemon.
    assert_eq!(show("WatchdogUSec"), "2min");
    let status = exec(
        &name,
        &[
            installed.to_str().unwrap(),
            "status",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("answering; runner t-systemd"),
        "{}",
        text(&status)
    );

    // A stop drains and ends cleanly, well inside TimeoutStopSec.
    let stop = exec(&name, &["systemctl", "stop", "codex-runner.service"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(show("ActiveState"), "inactive");
    assert_eq!(show("Result"), "success");
    let journal = text(&exec(
        &name,
        &["journalctl", "-u", "codex-runner.service", "--no-pager"],
    ));
    assert!(journal.contains("stopped"), "{journal}");

    let un = exec(&name, &[installed.to_str().unwrap(), "uninstall"]);
    assert!(
        un.status.success(),
        "{}",
        String::from_utf8_lossy(&un.stderr)
    );
    // What is left is the package's unit, disabled, and the package's user.
    packaged_and_idle();
    assert!(exec(&name, &["getent", "passwd", "codex-runner"])
        .status
        .success());
}
