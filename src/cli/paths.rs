//! Where a runner keeps its things, the same for every command: `register` writes the host
//! config where `run`, `selftest` and `unregister` look for it, and the state directory a
//! config does not name is where a systemd unit's `StateDirectory=` puts it.

use std::ffi::OsString;
use std::path::PathBuf;

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The host config of a runner set up as root.
pub const ROOT_CONFIG: &str = "/etc/codex-runner/runner.toml";
/// The state directory of a runner set up as root (and the unit's `StateDirectory=`).
pub const ROOT_STATE_DIR: &str = "/var/lib/codex-runner";

fn env(key: &str) -> Option<OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}

/// The host config when none is named (clap reads `CODEX_RUNNER_CONFIG` before this):
/// `/etc/codex-runner/runner.toml` as root, else `$XDG_CONFIG_HOME/codex-runner/runner.toml`
/// (`~/.config/codex-runner/runner.toml`).
pub fn default_config() -> PathBuf {
    config_for(is_root(), env)
}

fn config_for(root: bool, env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let system = PathBuf::from(ROOT_CONFIG);
    if root {
        return system;
    }
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")));
    base.map_or(system, |b| b.join("codex-runner/runner.toml"))
}

/// The config `config` names, else [`default_config`].
pub fn config_or_default(config: Option<PathBuf>) -> PathBuf {
    config.unwrap_or_else(default_config)
}

/// The state directory when the config names none: systemd's `$STATE_DIRECTORY` (a unit with
/// `StateDirectory=`), else `/var/lib/codex-runner` as root, else `$XDG_STATE_HOME/codex-runner`
/// (`~/.local/state/codex-runner`).
pub fn default_state_dir() -> PathBuf {
    state_dir_for(is_root(), env)
}

fn state_dir_for(root: bool, env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let system = PathBuf::from(ROOT_STATE_DIR);
    // systemd lists one directory per StateDirectory= entry, colon-separated.
    if let Some(first) = env("STATE_DIRECTORY").and_then(|dirs| {
        let dirs = dirs.to_string_lossy().into_owned();
        dirs.split(':').find(|d| !d.is_empty()).map(PathBuf::from)
    }) {
        return first;
    }
    if root {
        return system;
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return PathBuf::from(d).join("codex-runner");
    }
    env("HOME").map_or(system, |h| {
        PathBuf::from(h).join(".local/state/codex-runner")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn root_keeps_its_things_in_the_system_places_and_a_user_in_its_home() {
        let home = vars(&[("HOME", "/home/ops")]);
        assert_eq!(
            config_for(true, &home),
            PathBuf::from("/etc/codex-runner/runner.toml")
        );
        assert_eq!(
            config_for(false, &home),
            PathBuf::from("/home/ops/.config/codex-runner/runner.toml")
        );
        let xdg = vars(&[
            ("HOME", "/home/ops"),
            ("XDG_CONFIG_HOME", "/cfg"),
            ("XDG_STATE_HOME", "/st"),
        ]);
        assert_eq!(
            config_for(false, &xdg),
            PathBuf::from("/cfg/codex-runner/runner.toml")
        );
        assert_eq!(
            state_dir_for(true, &home),
            PathBuf::from("/var/lib/codex-runner")
        );
        assert_eq!(
            state_dir_for(false, &home),
            PathBuf::from("/home/ops/.local/state/codex-runner")
        );
        assert_eq!(
            state_dir_for(false, &xdg),
            PathBuf::from("/st/codex-runner")
        );
        // `sudo register` no longer records root's home as the state directory.
        let sudo = vars(&[("HOME", "/root")]);
        assert_eq!(
            state_dir_for(true, &sudo),
            PathBuf::from("/var/lib/codex-runner")
        );
    }

    #[test]
    fn a_systemd_state_directory_wins_for_root_and_users_alike() {
        let unit = vars(&[
            ("STATE_DIRECTORY", "/var/lib/codex-runner-a:/var/lib/other"),
            ("HOME", "/x"),
        ]);
        for root in [true, false] {
            assert_eq!(
                state_dir_for(root, &unit),
                PathBuf::from("/var/lib/codex-runner-a")
            );
        }
    }
}
