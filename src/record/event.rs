//! The events of a run log, typed: what each line of `logs/<id>.jsonl` says after its `ts` and
//! `id`. The field names are the log's format (README, "The run log"); change them only with
//! a migration of the logs already on branches.

use crate::commit::CommitId;
use serde::{Deserialize, Serialize};

use crate::contract::Violation;

/// One line of a run log, without its time and request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogEvent {
    /// The request was found on the branch.
    Received {
        /// The request file.
        file: String,
        /// The commit that brought it.
        commit: CommitId,
    },
    /// It passed validation and was routed.
    Validated {
        /// Its handler kind.
        kind: String,
        /// The lock key it runs under.
        resource: String,
        /// Its effective timeout.
        timeout_ms: u64,
    },
    /// An earlier runner process stopped before the container started; it starts now.
    Restarted {
        /// The attempt that starts.
        attempt: u32,
        /// Why, for a reader of the log.
        note: String,
    },
    /// An earlier attempt was interrupted by something other than the handler.
    Interrupted {
        /// The interrupted attempt.
        attempt: u32,
        /// What interrupted it.
        reason: String,
        /// The repository's `on_interrupt` policy: `rerun` or `record`.
        policy: String,
        /// The attempt that runs next, under `rerun`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_attempt: Option<u32>,
    },
    /// This process follows a container an earlier runner process started.
    Reattached {
        /// The attempt being followed.
        attempt: u32,
        /// Its container.
        container: String,
        /// What the reader should know about the output that follows.
        note: String,
    },
    /// The request waited for another request's lock first.
    WaitedForLock {
        /// The lock key.
        resource: String,
    },
    /// The request was not run: the reason, or every broken rule of the contract.
    Rejected {
        /// The rules the request file breaks (a rejection by the planner).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        violations: Vec<Violation>,
        /// Why it could not start (a rejection at run time).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The container started.
    Started {
        /// Its name.
        container: String,
        /// The image it runs.
        image: String,
        /// The attempt, from 1.
        attempt: u32,
        /// The user it runs as (`uid:gid`).
        user: String,
        /// Its network mode.
        network: String,
    },
    /// One line (or piece of a long line) the handler wrote.
    Output {
        /// `stdout` or `stderr`.
        stream: String,
        /// The text, without its newline.
        line: String,
    },
    /// The output cap was reached; later output was dropped.
    OutputTruncated {
        /// The cap in bytes.
        cap_bytes: u64,
        /// For the reader.
        note: String,
    },
    /// The container ended.
    Exit {
        /// Its exit code, when it exited.
        exit_code: Option<i64>,
        /// The kernel's OOM killer ended it.
        oom_killed: bool,
        /// Bytes of output seen, dropped ones included.
        output_bytes: u64,
    },
    /// The request reached its final state; the last line of a log.
    Finished {
        /// The final state (`succeeded`, `failed`, …).
        state: String,
        /// Why, for anything but a clean success.
        reason: Option<String>,
        /// The container's run time, when one ran.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
}

impl LogEvent {
    /// The event read from one line of a run log, if the line is one.
    pub fn parse(line: &str) -> Option<(String, LogEvent)> {
        #[derive(Deserialize)]
        struct Line {
            ts: String,
            #[serde(flatten)]
            event: LogEvent,
        }
        serde_json::from_str::<Line>(line)
            .ok()
            .map(|l| (l.ts, l.event))
    }
}
