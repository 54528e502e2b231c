//! `codex-runner install` and `uninstall`: the daemon as a hardened systemd service.
//!
//! `install` runs as root once `register` has written the host config. It creates the service's
//! system user when missing, lets that user read the config and the credential files it names
//! and own the state and work directories, writes `codex-runner.service`, and enables and
//! starts it. The service reaches Docker through the socket's group, never as root.
//! `uninstall` stops and removes the unit (and the user, when `install` created it); the
//! state directory stays, since results not yet pushed live there. The Debian package ships
//! the unit for the default config in `/usr/lib/systemd/system`, disabled; the one `install`
//! writes in `/etc/systemd/system` takes precedence, and `uninstall` leaves the package's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::HostConfig;
use crate::exit;

/// The unit's file name.
pub const UNIT: &str = "codex-runner.service";

/// What a unit file says when `install` created its user, so `uninstall` removes it too.
const CREATED_USER: &str = "# user created by codex-runner install: ";

/// Arguments of `install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Host config the service runs with [default: as `register`].
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The system user the service runs as; created when missing.
    #[arg(long, env = "CODEX_RUNNER_USER", default_value = "codex-runner")]
    pub user: String,
    /// The binary the unit starts [default: this one].
    #[arg(long, env = "CODEX_RUNNER_BIN")]
    pub bin: Option<PathBuf>,
    /// Where the unit is written.
    #[arg(
        long,
        env = "CODEX_RUNNER_UNIT_DIR",
        default_value = "/etc/systemd/system"
    )]
    pub unit_dir: PathBuf,
    /// Write the unit and set up the user and files, but neither enable nor start it.
    #[arg(long, env = "CODEX_RUNNER_NO_START")]
    pub no_start: bool,
}

/// Arguments of `uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Where the unit was written.
    #[arg(
        long,
        env = "CODEX_RUNNER_UNIT_DIR",
        default_value = "/etc/systemd/system"
    )]
    pub unit_dir: PathBuf,
    /// Remove the unit without asking systemd to stop and disable it first.
    #[arg(long, env = "CODEX_RUNNER_NO_STOP")]
    pub no_stop: bool,
}

/// What the unit says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// The binary.
    pub bin: PathBuf,
    /// The host config.
    pub config: PathBuf,
    /// The user it runs as, and whether `install` created it.
    pub user: String,
    /// Whether `install` created the user.
    pub created_user: bool,
    /// Groups beyond the user's own (the Docker socket's).
    pub groups: Vec<String>,
    /// Directories it writes (state, work, staged secrets when outside `/dev`).
    pub writes: Vec<PathBuf>,
    /// How long it may take to stop: the drain timeout, the grace, and a minute to push.
    pub stop_timeout: Duration,
    /// Its first lines: who wrote it ([`BY_INSTALL`], or the package's).
    pub header: &'static str,
}

/// The header of a unit `install` writes into `/etc/systemd/system`, fitted to a host config.
pub const BY_INSTALL: &str =
    "# Written by `codex-runner install`; `codex-runner uninstall` removes it.\n";

/// The unit the Debian package ships in `/usr/lib/systemd/system`: [`UnitSpec::packaged`],
/// kept so by a test (`cargo deb` takes it from here).
#[cfg(test)]
const PACKAGED_UNIT: &str = "debian/codex-runner.service";

#[cfg(test)]
impl UnitSpec {
    /// The unit the package ships: the default config, state directory and user, the socket
    /// group Debian's Docker uses, and the default drain timeout.
    pub fn packaged() -> UnitSpec {
        let state = PathBuf::from(super::paths::ROOT_STATE_DIR);
        UnitSpec {
            bin: "/usr/bin/codex-runner".into(),
            config: PathBuf::from(super::paths::ROOT_CONFIG),
            user: "codex-runner".into(),
            created_user: false,
            groups: vec!["docker".into()],
            writes: vec![state.clone(), state.join("work")],
            stop_timeout: super::dispatch::DEFAULT_DRAIN_TIMEOUT
                + crate::config::HostLimits::default().grace
                + Duration::from_secs(60),
            header:
                "# Shipped by the codex-runner package for the default host config; not enabled.
# After `codex-runner register`, `codex-runner install` writes a copy fitted to the config
# (user, credentials, directories, stop timeout) to /etc/systemd/system, which takes
# precedence over this one, and starts it.\n",
        }
    }
}

/// The unit file for `spec`: `Type=notify` with a watchdog, restarted on failure except on a
/// usage or config error (exit 2, which a restart cannot mend), and hardened.
pub fn unit_text(spec: &UnitSpec) -> String {
    let mut out = String::from(spec.header);
    if spec.created_user {
        out.push_str(&format!("{CREATED_USER}{}\n", spec.user));
    }
    let quote = |p: &Path| {
        let s = p.display().to_string();
        if s.contains(char::is_whitespace) {
            format!("\"{s}\"")
        } else {
            s
        }
    };
    // `-`: a directory gone since install does not stop the unit from starting.
    let writes: Vec<String> = spec
        .writes
        .iter()
        .map(|p| format!("-{}", quote(p)))
        .collect();
    out.push_str(&format!(
        "[Unit]
Description=codex-runner: runs requests merged to the mainline in hardened containers
After=network-online.target docker.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={bin} run --config {config}
User={user}
Group={user}
{groups}StateDirectory=codex-runner
StateDirectoryMode=0750
Restart=on-failure
RestartSec=5s
RestartPreventExitStatus=2
TimeoutStopSec={stop}s
WatchdogSec=2min
KillSignal=SIGTERM
KillMode=mixed
UMask=0027
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={writes}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
",
        bin = quote(&spec.bin),
        config = quote(&spec.config),
        user = spec.user,
        groups = if spec.groups.is_empty() {
            String::new()
        } else {
            format!("SupplementaryGroups={}\n", spec.groups.join(" "))
        },
        stop = spec.stop_timeout.as_secs(),
        writes = writes.join(" "),
    ));
    out
}

/// Run `install`.
pub async fn install(a: InstallArgs) -> i32 {
    tell(tokio::task::block_in_place(|| do_install(&a)))
}

/// Print what was done, a line each; the exit code.
fn tell(done: anyhow::Result<Vec<String>>) -> i32 {
    match done {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            exit::OK
        }
        Err(e) => {
            super::report_error(&e);
            exit::FAILED
        }
    }
}

fn do_install(a: &InstallArgs) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        super::paths::is_root(),
        "install writes a system unit and may create a system user: run it as root"
    );
    let config = std::path::absolute(super::paths::config_or_default(a.config.clone()))?;
    anyhow::ensure!(
        config.exists(),
        "no host config at {}: write one with `codex-runner register` first, or name it with --config",
        config.display()
    );
    let host = HostConfig::load(&config)?;
    let bin = match &a.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("failed to find this binary")?,
    };
    let bin = std::fs::canonicalize(&bin)
        .with_context(|| format!("failed to resolve the binary {}", bin.display()))?;
    for home in ["/root", "/home"] {
        anyhow::ensure!(
            !bin.starts_with(home),
            "the service cannot run {} (ProtectHome=yes hides {home}): copy it to /usr/local/bin and pass --bin",
            bin.display()
        );
    }
    let mut said = Vec::new();
    let created_user = ensure_user(&a.user, &mut said)?;
    let group = primary_group(&a.user)?;
    let state_dir = host
        .state_dir
        .clone()
        .unwrap_or_else(super::paths::default_state_dir);
    let work_dir = host
        .work_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("work"));
    for dir in [&state_dir, &work_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        chown_tree(dir, &a.user, &group)?;
    }
    said.push(format!(
        "{} and {} belong to {}",
        state_dir.display(),
        work_dir.display(),
        a.user
    ));
    let mut readable = vec![config.clone()];
    readable.extend(host.server.webhook_secret_file.clone());
    if let Some(f) = &host.forge {
        readable.extend(f.token_file.clone());
        readable.extend(f.app_key_file.clone());
    }
    readable.extend(host.secrets.files().map(Path::to_path_buf));
    for file in &readable {
        share_with_group(file, &group)?;
    }
    said.push(format!(
        "{} file(s) readable by group {group}: the config and the credentials it names",
        readable.len()
    ));
    let groups: Vec<String> = docker_group().into_iter().collect();
    let mut writes = vec![state_dir.clone(), work_dir.clone()];
    let secrets_dir = host.secrets.dir().to_path_buf();
    if !secrets_dir.starts_with("/dev") {
        std::fs::create_dir_all(&secrets_dir)
            .with_context(|| format!("failed to create {}", secrets_dir.display()))?;
        chown_tree(&secrets_dir, &a.user, &group)?;
        writes.push(secrets_dir);
    }
    writes.dedup();
    let drain = host
        .drain_timeout
        .unwrap_or(super::dispatch::DEFAULT_DRAIN_TIMEOUT);
    let spec = UnitSpec {
        bin,
        config,
        user: a.user.clone(),
        created_user,
        groups,
        writes,
        stop_timeout: drain + host.limits.grace + Duration::from_secs(60),
        header: BY_INSTALL,
    };
    std::fs::create_dir_all(&a.unit_dir)
        .with_context(|| format!("failed to create {}", a.unit_dir.display()))?;
    let unit = a.unit_dir.join(UNIT);
    std::fs::write(&unit, unit_text(&spec))
        .with_context(|| format!("failed to write {}", unit.display()))?;
    said.push(format!("wrote {}", unit.display()));
    if a.no_start {
        said.push(format!(
            "not started (--no-start): systemctl daemon-reload && systemctl enable --now {UNIT}"
        ));
        return Ok(said);
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", UNIT])?;
    said.push(format!("enabled and started {UNIT}"));
    Ok(said)
}

/// Run `uninstall`.
pub async fn uninstall(a: UninstallArgs) -> i32 {
    tell(tokio::task::block_in_place(|| do_uninstall(&a)))
}

fn do_uninstall(a: &UninstallArgs) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        super::paths::is_root(),
        "uninstall removes a system unit: run it as root"
    );
    let unit = a.unit_dir.join(UNIT);
    let text = std::fs::read_to_string(&unit)
        .with_context(|| format!("no unit at {}: nothing to uninstall", unit.display()))?;
    let mut said = Vec::new();
    if !a.no_stop {
        systemctl(&["disable", "--now", UNIT])?;
        said.push(format!("stopped and disabled {UNIT}"));
    }
    std::fs::remove_file(&unit).with_context(|| format!("failed to remove {}", unit.display()))?;
    said.push(format!("removed {}", unit.display()));
    if !a.no_stop {
        systemctl(&["daemon-reload"])?;
    }
    if let Some(user) = text.lines().find_map(|l| l.strip_prefix(CREATED_USER)) {
        run("userdel", &[user.trim()])?;
        said.push(format!("removed the user {} install created", user.trim()));
    }
    said.push("kept the state directory: results not yet pushed live there".into());
    Ok(said)
}

/// Make sure `user` exists, as a system user without a login; whether it was created.
fn ensure_user(user: &str, said: &mut Vec<String>) -> anyhow::Result<bool> {
    if Command::new("getent")
        .args(["passwd", user])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        said.push(format!("runs as the existing user {user}"));
        return Ok(false);
    }
    run(
        "useradd",
        &[
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ],
    )?;
    said.push(format!("created the system user {user}"));
    Ok(true)
}

fn primary_group(user: &str) -> anyhow::Result<String> {
    let out = Command::new("id")
        .args(["-gn", user])
        .output()
        .context("failed to run id")?;
    anyhow::ensure!(out.status.success(), "no user {user}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The group that may use the Docker socket (`DOCKER_HOST`'s, else `/var/run/docker.sock`).
fn docker_group() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    let gid = std::fs::metadata(&socket).ok()?.gid();
    if gid == 0 {
        return None;
    }
    let out = Command::new("getent")
        .args(["group", &gid.to_string()])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':')
        .next()
        .filter(|g| !g.is_empty())
        .map(str::to_string)
}

/// Give `path` (and everything under it) to `user`:`group`.
fn chown_tree(path: &Path, user: &str, group: &str) -> anyhow::Result<()> {
    run(
        "chown",
        &[
            "-R",
            &format!("{user}:{group}"),
            &path.display().to_string(),
        ],
    )
}

/// Let `group` read `file` (and pass through its directory), and nobody else.
fn share_with_group(file: &Path, group: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let shown = file.display().to_string();
    run("chgrp", &[group, &shown])?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640))
        .with_context(|| format!("failed to set the mode of {shown}"))?;
    if let Some(dir) = file.parent() {
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("failed to read {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o011 == 0 {
            // Neither group nor others may enter: let the group pass through.
            run("chgrp", &[group, &dir.display().to_string()])?;
            std::fs::set_permissions(
                dir,
                std::fs::Permissions::from_mode((mode & 0o7777) | 0o010),
            )
            .with_context(|| format!("failed to set the mode of {}", dir.display()))?;
        }
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    run("systemctl", args).context(
        "systemd did not take it (is systemd running here? --no-start writes the unit only)",
    )
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_notify_hardened_and_will_not_restart_on_a_bad_config() {
        let spec = UnitSpec {
            bin: "/usr/local/bin/codex-runner".into(),
            config: "/etc/codex-runner/runner.toml".into(),
            user: "codex-runner".into(),
            created_user: true,
            groups: vec!["docker".into()],
            writes: vec!["/var/lib/codex-runner".into(), "/srv/work dir".into()],
            stop_timeout: Duration::from_secs(670),
            header: BY_INSTALL,
        };
        let text = unit_text(&spec);
        for line in [
            "# user created by codex-runner install: codex-runner",
            "Type=notify",
            "ExecStart=/usr/local/bin/codex-runner run --config /etc/codex-runner/runner.toml",
            "User=codex-runner",
            "SupplementaryGroups=docker",
            "StateDirectory=codex-runner",
            "RestartPreventExitStatus=2",
            "TimeoutStopSec=670s",
            "WatchdogSec=2min",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "ReadWritePaths=-/var/lib/codex-runner -\"/srv/work dir\"",
            "CapabilityBoundingSet=",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let mine = UnitSpec {
            created_user: false,
            groups: vec![],
            ..spec
        };
        let text = unit_text(&mine);
        assert!(!text.contains(CREATED_USER) && !text.contains("SupplementaryGroups"));
    }

    #[test]
    fn the_packaged_unit_is_the_one_for_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(PACKAGED_UNIT);
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        let wanted = unit_text(&UnitSpec::packaged());
        if shipped != wanted && std::env::var_os("CODEX_RUNNER_BLESS").is_some() {
            std::fs::write(&path, &wanted).unwrap();
            return;
        }
        assert_eq!(
            shipped, wanted,
            "{PACKAGED_UNIT} is not what `install` would write for the defaults; \
             CODEX_RUNNER_BLESS=1 cargo test packaged_unit rewrites it"
        );
        for line in [
            "ExecStart=/usr/bin/codex-runner run --config /etc/codex-runner/runner.toml",
            "User=codex-runner",
            "SupplementaryGroups=docker",
            "TimeoutStopSec=670s",
        ] {
            assert!(
                wanted.lines().any(|l| l == line),
                "no `{line}` in:\n{wanted}"
            );
        }
    }
}
