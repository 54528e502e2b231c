//! The attempt journal: what a runner was doing with a request when it died.
//!
//! Before a container is created, `attempt.json` in the request's result directory names
//! the attempt and its container (`starting`); once the container runs it says so
//! (`started`). A status file beside it means the attempt is over and only its publication
//! may be missing. A later runner process reads the journal, asks the engine what became of
//! the container ([`Fate`]) and decides with [`decide`] (pure) what happens next:
//!
//! | journal  | container                      | next                                       |
//! |----------|--------------------------------|--------------------------------------------|
//! | starting | missing / created              | the same attempt starts (it never ran)     |
//! | any      | running or exited, this boot   | followed to its end and recorded (it ran once) |
//! | any      | owner still alive              | left alone (a live sibling has it)         |
//! | started  | missing, or from an older boot | interrupted: the repository's policy       |
//! | engine lost | exited non-zero             | interrupted: the repository's policy       |
//!
//! The policy (`codex.on_interrupt` in `codex.repo.yaml`) is `rerun` (the next attempt, with
//! `CODEX_ATTEMPT` one higher, up to `max_attempts`) or `record` (state `interrupted`).

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::contract::repo_config::{OnInterrupt, RepoConfig};
use crate::exec::Fate;
use crate::record::ResultDir;

/// How far an attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// About to create the container; it may not exist.
    Starting,
    /// The container was started.
    Started,
    /// The engine failed while the container ran: its exit code says nothing about the
    /// handler unless it is 0.
    EngineLost,
}

/// One request's current attempt, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AttemptRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The container's name.
    pub container: String,
    /// How far it got.
    pub phase: Phase,
    /// When the container started (RFC 3339), once it did.
    #[serde(default)]
    pub started_at: Option<String>,
    /// The same, in Unix milliseconds: the timeout counts from here.
    #[serde(default)]
    pub started_ms: u64,
    /// The image it runs.
    pub image: String,
}

/// Read the journal entry in `dir`, if any. A torn or unreadable entry counts as none: it
/// can only be torn if the process died writing it, before the container was created.
pub(crate) fn read(files: &ResultDir) -> Option<AttemptRecord> {
    let bytes = std::fs::read(files.journal()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write the journal entry in `dir` durably: temp file, fsync, rename, fsync the directory.
pub(crate) fn write(files: &ResultDir, record: &AttemptRecord) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(record)?;
    crate::record::write_durably(&files.journal(), &bytes)
        .with_context(|| format!("failed to journal attempt {}", record.attempt))
}

/// What to do with an attempt a dead runner process left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The attempt never started: start it (same number).
    Start { attempt: u32 },
    /// The container ran (or runs) on this boot: follow it to its end and record that.
    Follow(AttemptRecord),
    /// A live runner process of this host owns the container: not ours to touch.
    Busy,
    /// The handler was interrupted; run it again as attempt `attempt`.
    Rerun { attempt: u32, why: String },
    /// The handler was interrupted; record that.
    Record { attempt: u32, why: String },
}

/// Decide what becomes of `record`, given the container's fate. Pure: `boot` is this boot's
/// id (`None` where runs outlive the host, as a cluster's Jobs do: any boot's are followed)
/// and `alive` says whether an owner label names a live runner process.
pub(crate) fn decide(
    record: &AttemptRecord,
    fate: &Fate,
    boot: Option<&str>,
    alive: impl Fn(Option<&str>) -> bool,
    config: &RepoConfig,
) -> Recovery {
    let this_boot = |owner: &Option<String>| {
        owner
            .as_deref()
            .and_then(|o| o.split_once('/'))
            .is_some_and(|(b, _)| boot.is_none_or(|boot| b == boot))
    };
    let why = match (fate, record.phase) {
        (Fate::Missing | Fate::Created, Phase::Starting) => {
            return Recovery::Start {
                attempt: record.attempt,
            }
        }
        (Fate::Running { owner } | Fate::Exited { owner, .. }, _) if alive(owner.as_deref()) => {
            return Recovery::Busy
        }
        (Fate::Exited { exit_code, .. }, Phase::EngineLost) if *exit_code != Some(0) => format!(
            "the container engine failed while attempt {} ran (exit code {})",
            record.attempt,
            exit_code.map_or("unknown".into(), |c| c.to_string())
        ),
        (Fate::Running { owner } | Fate::Exited { owner, .. }, _) if this_boot(owner) => {
            return Recovery::Follow(record.clone())
        }
        (Fate::Running { .. } | Fate::Exited { .. }, _) => {
            format!("the host restarted while attempt {} ran", record.attempt)
        }
        (Fate::Missing | Fate::Created, _) => format!(
            "the container of attempt {} vanished while its runner was down",
            record.attempt
        ),
    };
    interrupted(record.attempt, why, config)
}

/// What the repository's policy makes of attempt `attempt`, interrupted for `why`.
pub(crate) fn interrupted(attempt: u32, why: String, config: &RepoConfig) -> Recovery {
    match config.on_interrupt {
        OnInterrupt::Rerun if attempt < config.max_attempts => Recovery::Rerun {
            attempt: attempt + 1,
            why,
        },
        OnInterrupt::Rerun => Recovery::Record {
            attempt,
            why: format!(
                "{why}; it was attempt {attempt} of at most {}",
                config.max_attempts
            ),
        },
        OnInterrupt::Record => Recovery::Record { attempt, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(phase: Phase, attempt: u32) -> AttemptRecord {
        AttemptRecord {
            attempt,
            container: "codex-r-x-1".into(),
            phase,
            started_at: None,
            started_ms: 0,
            image: "img".into(),
        }
    }

    fn config(on_interrupt: OnInterrupt, max_attempts: u32) -> RepoConfig {
        RepoConfig {
            on_interrupt,
            max_attempts,
            ..RepoConfig::default()
        }
    }

    fn running(owner: &str) -> Fate {
        Fate::Running {
            owner: Some(owner.into()),
        }
    }

    fn exited(owner: &str, code: i64) -> Fate {
        Fate::Exited {
            owner: Some(owner.into()),
            exit_code: Some(code),
        }
    }

    #[test]
    fn every_row_of_the_table() {
        let rerun = config(OnInterrupt::Rerun, 3);
        let record = config(OnInterrupt::Record, 3);
        let dead = |_: Option<&str>| false;
        let d = |r: &AttemptRecord, f: &Fate, c: &RepoConfig| decide(r, f, Some("b1"), dead, c);

        // Never started: the same attempt, whatever the policy.
        for fate in [Fate::Missing, Fate::Created] {
            assert_eq!(
                d(&rec(Phase::Starting, 2), &fate, &record),
                Recovery::Start { attempt: 2 }
            );
        }
        // Ran on this boot: followed, never run again.
        let started = rec(Phase::Started, 1);
        assert_eq!(
            d(&started, &running("b1/7"), &record),
            Recovery::Follow(started.clone())
        );
        assert_eq!(
            d(&started, &exited("b1/7", 3), &rerun),
            Recovery::Follow(started.clone())
        );
        assert_eq!(
            d(&rec(Phase::Starting, 1), &exited("b1/7", 0), &rerun),
            Recovery::Follow(rec(Phase::Starting, 1)),
            "the journal had not caught up with a container that ran"
        );
        // A live owner keeps it.
        assert_eq!(
            decide(&started, &running("b1/7"), Some("b1"), |_| true, &rerun),
            Recovery::Busy
        );
        // Interrupted: the policy.
        for fate in [Fate::Missing, exited("b0/7", 137), running("b0/7")] {
            assert!(matches!(
                d(&started, &fate, &rerun),
                Recovery::Rerun { attempt: 2, .. }
            ));
            assert!(matches!(
                d(&started, &fate, &record),
                Recovery::Record { attempt: 1, .. }
            ));
        }
        let lost = rec(Phase::EngineLost, 1);
        assert!(matches!(
            d(&lost, &exited("b1/7", 143), &rerun),
            Recovery::Rerun { attempt: 2, ref why } if why.contains("engine")
        ));
        assert_eq!(
            d(&lost, &exited("b1/7", 0), &rerun),
            Recovery::Follow(lost.clone()),
            "it finished before the engine went"
        );
        // Attempts run out.
        assert!(matches!(
            d(&rec(Phase::Started, 3), &Fate::Missing, &rerun),
            Recovery::Record { attempt: 3, ref why } if why.contains("at most 3")
        ));
        // A cluster's Job outlives the runner's host: followed after a reboot too.
        for fate in [running("b0/7"), exited("b0/7", 3)] {
            assert_eq!(
                decide(&started, &fate, None, dead, &record),
                Recovery::Follow(started.clone())
            );
        }
        assert!(matches!(
            decide(&started, &Fate::Missing, None, dead, &rerun),
            Recovery::Rerun { attempt: 2, .. }
        ));
    }
}
