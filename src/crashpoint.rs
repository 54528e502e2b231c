//! Fault injection for the crash-safety tests.
//!
//! `CODEX_RUNNER_CRASH_AT=<point>[:<n>]` makes the process kill itself with SIGKILL the
//! `n`-th time (default: the first) it reaches `<point>`, exactly as an operator's `kill -9`
//! or the OOM killer would. Unset (always, in production) every point is a no-op. The points,
//! in a request's order:
//!
//! | point          | where                                                              |
//! |----------------|--------------------------------------------------------------------|
//! | `before-start` | the attempt is journaled, its container not yet created              |
//! | `running`      | the container was started                                          |
//! | `after-exit`   | the container exited; its outcome is not yet recorded              |
//! | `before-push`  | the results are committed in the local mirror, not yet pushed      |
//! | `in-push`      | the remote accepted the push; the runner has not seen its answer   |
//! | `before-check` | the push is done; the check run is not yet updated                  |

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a point.
pub const ENV: &str = "CODEX_RUNNER_CRASH_AT";

/// Every point, for `--help`-like listings and tests.
pub const POINTS: &[&str] = &[
    "before-start",
    "running",
    "after-exit",
    "before-push",
    "in-push",
    "before-check",
];

fn armed() -> Option<&'static (String, u32)> {
    static ARMED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (point, n) = match v.split_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().ok()?),
                None => (v, 1),
            };
            POINTS.contains(&point.as_str()).then_some((point, n))
        })
        .as_ref()
}

/// Reach `point`: dies here if it is the armed one and its count has come.
pub fn hit(point: &str) {
    static HITS: AtomicU32 = AtomicU32::new(0);
    let Some((armed, n)) = armed() else { return };
    if armed == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("{ENV}: killing this process at `{point}`");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
