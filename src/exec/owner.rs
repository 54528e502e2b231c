//! Which runner process owns a container: the `<boot id>/<pid>` label, and whether that
//! process still lives. Any executor labels its containers this way.

/// This boot of this host (the first half of an owner label).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The owner label of this process.
pub fn owner_label() -> String {
    format!("{}/{}", boot_id(), std::process::id())
}

/// Whether the process an owner label names is a codex-runner alive now. Pure but for
/// `alive`, which says whether a pid is a running codex-runner.
pub fn owner_alive(label: Option<&str>, boot: &str, alive: impl Fn(u32) -> bool) -> bool {
    let Some((b, pid)) = label.and_then(|l| l.split_once('/')) else {
        return false;
    };
    b == boot && pid.parse().is_ok_and(alive)
}

/// Whether `pid` is a running codex-runner process.
pub fn is_runner_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|argv0| String::from_utf8_lossy(argv0).contains("codex-runner"))
        })
        .unwrap_or(false)
}

/// Whether an owner label names a live codex-runner process of this boot other than this
/// one (this process runs one pass at a time, so at a pass's start nothing is its own).
pub fn owner_is_alive(label: Option<&str>) -> bool {
    owner_alive(label, &boot_id(), |pid| {
        pid != std::process::id() && is_runner_process(pid)
    })
}

#[cfg(test)]
mod owner_tests {
    use super::owner_alive;

    #[test]
    fn only_a_live_runner_of_this_boot_owns_a_container() {
        let alive = |pid: u32| pid == 42;
        assert!(owner_alive(Some("boot-a/42"), "boot-a", alive));
        assert!(!owner_alive(Some("boot-a/43"), "boot-a", alive), "dead pid");
        assert!(
            !owner_alive(Some("boot-b/42"), "boot-a", alive),
            "an earlier boot"
        );
        assert!(!owner_alive(Some("garbage"), "boot-a", alive));
        assert!(
            !owner_alive(None, "boot-a", alive),
            "unlabelled: an older runner's"
        );
    }
}
