//! PURE. A request's lifecycle: the transitions the driver reports as a request moves, what
//! each asks for (log lines, the attempt journal, the check run), and [`conclude`], the one
//! place a request's final state is decided.
//!
//! ```text
//!  found ──(breaks the contract)──────────────────────────────────────────► recorded: rejected
//!    │ queued                                                                     ▲
//!    ▼                                                                            │ ended
//!  waiting for its lock, a slot, its claim ──(stopping, claimed elsewhere)──► left for later
//!    │ admitted (log begins) / resumed (an earlier process's attempt goes on)      │
//!    ▼                                                                            │
//!  preparing: checkout, image, secrets, container spec ──(unstartable)────────────┤
//!    │ starting (journal: starting)                                               │
//!    ▼                                                                            │
//!  launched (log: started; check: in progress) ─► running (journal: started) ─► exited
//!    │                                              │
//!    │ followed (a container an earlier process started)
//!    └──────────────────────────────────────────────┘
//!  running ──(the engine fails)──► engine lost (journal) ──► the next pass recovers it
//!  recorded ──(pushed)──► check: completed
//! ```
//!
//! The driver (`run.rs`) does what the effects say, in order; it decides nothing about states.

use crate::commit::CommitId;
use std::time::Duration;

use crate::contract::units::format_duration;
use crate::contract::Violation;
use crate::exec::RunOutcome;
use crate::record::{LogEvent, State};

use super::journal::{Phase, Recovery};

/// How an attempt ended, as the driver saw it: what [`conclude`] turns into a state.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending<'a> {
    /// The planner refused the request: the file breaks the contract.
    Refused(&'a [Violation]),
    /// It could not be started: its image, secrets or limits (why).
    Unstartable(&'a str),
    /// An earlier attempt was interrupted and the repository's policy records that (why).
    Interrupted(&'a str),
    /// Its container ran to an end.
    Ran {
        /// What the executor saw.
        outcome: &'a RunOutcome,
        /// The request's effective timeout.
        timeout: Duration,
    },
}

/// A request's final state, and why it is not a clean success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The final state.
    pub state: State,
    /// Why, for anything but a clean success.
    pub reason: Option<String>,
}

/// The final state an ending means. A stop the runner asked for outranks the timeout, which
/// outranks the OOM killer, which outranks the exit code.
pub(crate) fn conclude(ending: &Ending<'_>) -> Verdict {
    let (state, reason) = match ending {
        Ending::Refused(violations) => (
            State::Rejected,
            Some(
                violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ),
        Ending::Unstartable(why) => (State::Rejected, Some(why.to_string())),
        Ending::Interrupted(why) => (State::Interrupted, Some(format!("interrupted: {why}"))),
        Ending::Ran { outcome, timeout } => {
            if outcome.cancelled {
                (
                    State::Cancelled,
                    Some("cancelled: the runner was stopping".to_string()),
                )
            } else if outcome.timed_out {
                (
                    State::TimedOut,
                    Some(format!("timeout after {}", format_duration(*timeout))),
                )
            } else if outcome.oom_killed {
                (State::Failed, Some("oom".to_string()))
            } else if outcome.exit_code == Some(0) {
                (State::Succeeded, None)
            } else if let Some(lost) = &outcome.lost {
                (State::Failed, Some(lost.clone()))
            } else {
                let code = outcome
                    .exit_code
                    .map_or("unknown".into(), |c| c.to_string());
                (State::Failed, Some(format!("exit code {code}")))
            }
        }
    };
    Verdict { state, reason }
}

/// What the driver reports as a request moves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transition<'a> {
    /// Found on the branch and routed: it waits for its turn.
    Queued,
    /// Its log begins: the request as found and, unless the planner refused it, as routed.
    Admitted {
        /// The request file.
        file: &'a str,
        /// The commit that brought it.
        commit: CommitId,
        /// Kind, resource and timeout, when it was routed.
        routed: Option<(&'a str, &'a str, Duration)>,
    },
    /// An attempt an earlier runner process left goes on as recovery decided.
    Resumed(&'a Recovery),
    /// It waited for another request's lock first.
    WaitedForLock(&'a str),
    /// Its container is about to be created: journaled first, so a process that dies from
    /// here on leaves a record of what it was about to run.
    Starting,
    /// Its container is being started.
    Launched {
        /// The container's name.
        container: &'a str,
        /// Its image.
        image: &'a str,
        /// The attempt.
        attempt: u32,
        /// Its user.
        user: &'a str,
        /// Its network.
        network: &'a str,
    },
    /// This process follows a container an earlier process started.
    Followed,
    /// The container runs.
    Running,
    /// The engine failed while the container ran: its exit code no longer speaks for the
    /// handler.
    EngineLost,
    /// The attempt ended; the verdict is [`conclude`]'s.
    Ended {
        /// How it ended.
        ending: Ending<'a>,
        /// Its state and reason.
        verdict: &'a Verdict,
        /// The container's run time, when one ran.
        duration_ms: Option<u64>,
    },
}

/// Where a request's check run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckStage {
    /// Waiting.
    Queued,
    /// Its container runs.
    InProgress,
}

/// One thing a transition asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Append this line to the request's run log.
    Log(LogEvent),
    /// Journal the attempt at this phase, durably.
    Journal(Phase),
    /// Move the check run (when a forge is configured).
    Check(CheckStage),
    /// Write the status file: the request reached its final state.
    Status,
    /// Count it in the metrics.
    Count(Count),
}

/// What a transition counts in the metrics (see `src/metrics.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// It waited for another request's lock.
    LockWaited,
    /// Its container started: how long it waited since it was found, and how long the
    /// start took; it counts as running from here.
    Started,
    /// A container an earlier process started runs on: it counts as running.
    Resumed,
    /// It was recorded in this state, its container having run this long (ms), if one ran.
    Ended(State, Option<u64>),
}

/// What `transition` asks for, in the order the driver must do it.
pub(crate) fn effects(transition: &Transition<'_>) -> Vec<Effect> {
    use Effect::{Check, Journal, Log};
    match *transition {
        Transition::Queued => vec![Check(CheckStage::Queued)],
        Transition::Admitted {
            file,
            commit,
            routed,
        } => {
            let mut out = vec![Log(LogEvent::Received {
                file: file.to_string(),
                commit,
            })];
            if let Some((kind, resource, timeout)) = routed {
                out.push(Log(LogEvent::Validated {
                    kind: kind.to_string(),
                    resource: resource.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                }));
            }
            out
        }
        Transition::Resumed(recovery) => resumed(recovery).into_iter().map(Log).collect(),
        Transition::WaitedForLock(resource) => vec![
            Log(LogEvent::WaitedForLock {
                resource: resource.to_string(),
            }),
            Effect::Count(Count::LockWaited),
        ],
        Transition::Starting => vec![Journal(Phase::Starting)],
        Transition::Launched {
            container,
            image,
            attempt,
            user,
            network,
        } => vec![
            Log(LogEvent::Started {
                container: container.to_string(),
                image: image.to_string(),
                attempt,
                user: user.to_string(),
                network: network.to_string(),
            }),
            Check(CheckStage::InProgress),
        ],
        Transition::Followed => vec![Check(CheckStage::InProgress), Effect::Count(Count::Resumed)],
        Transition::Running => vec![Journal(Phase::Started), Effect::Count(Count::Started)],
        Transition::EngineLost => vec![Journal(Phase::EngineLost)],
        Transition::Ended {
            ending,
            verdict,
            duration_ms,
        } => {
            let mut out = Vec::new();
            match ending {
                Ending::Refused(violations) => out.push(Log(LogEvent::Rejected {
                    violations: violations.to_vec(),
                    reason: None,
                })),
                Ending::Unstartable(why) => out.push(Log(LogEvent::Rejected {
                    violations: Vec::new(),
                    reason: Some(why.to_string()),
                })),
                Ending::Interrupted(_) => {}
                Ending::Ran { outcome, .. } => out.push(Log(LogEvent::Exit {
                    exit_code: outcome.exit_code,
                    oom_killed: outcome.oom_killed,
                    output_bytes: outcome.output_bytes,
                })),
            }
            out.push(Log(LogEvent::Finished {
                state: verdict.state.as_str().to_string(),
                reason: verdict.reason.clone(),
                duration_ms,
            }));
            out.push(Effect::Status);
            out.push(Effect::Count(Count::Ended(verdict.state, duration_ms)));
            out
        }
    }
}

/// The log lines that say how an earlier process's attempt goes on.
fn resumed(recovery: &Recovery) -> Option<LogEvent> {
    match recovery {
        Recovery::Start { attempt } => Some(LogEvent::Restarted {
            attempt: *attempt,
            note: "the runner stopped before the container started; starting it now".into(),
        }),
        Recovery::Rerun { attempt, why } => Some(LogEvent::Interrupted {
            attempt: attempt - 1,
            reason: why.clone(),
            policy: "rerun".into(),
            next_attempt: Some(*attempt),
        }),
        Recovery::Record { attempt, why } => Some(LogEvent::Interrupted {
            attempt: *attempt,
            reason: why.clone(),
            policy: "record".into(),
            next_attempt: None,
        }),
        Recovery::Follow(rec) => Some(LogEvent::Reattached {
            attempt: rec.attempt,
            container: rec.container.clone(),
            note: "the runner restarted while the handler ran; its output since the last line above comes from the engine's log".into(),
        }),
        Recovery::Busy => None,
    }
}

/// The attempt a request runs as, given what recovery decided for it.
pub(crate) fn attempt_of(recovery: Option<&Recovery>) -> u32 {
    match recovery {
        Some(
            Recovery::Start { attempt }
            | Recovery::Rerun { attempt, .. }
            | Recovery::Record { attempt, .. },
        ) => *attempt,
        Some(Recovery::Follow(rec)) => rec.attempt,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::AttemptRecord;

    fn ran(exit_code: Option<i64>, flags: &str) -> RunOutcome {
        RunOutcome {
            exit_code,
            oom_killed: flags.contains("oom"),
            timed_out: flags.contains("timeout"),
            cancelled: flags.contains("cancel"),
            output_bytes: 12,
            ..Default::default()
        }
    }

    #[test]
    fn conclude_decides_every_final_state() {
        let timeout = Duration::from_secs(90);
        let violations = [
            Violation::new("requests/a.yaml", "unknown-kind", "unknown kind `x`"),
            Violation::new("requests/a.yaml", "missing-field", "`kind` is missing"),
        ];
        enum Case {
            Ran(Option<i64>, &'static str),
            Unstartable(&'static str),
            Interrupted(&'static str),
            Refused,
        }
        let table = [
            (Case::Ran(Some(0), ""), State::Succeeded, None),
            (Case::Ran(Some(3), ""), State::Failed, Some("exit code 3")),
            (Case::Ran(None, ""), State::Failed, Some("exit code unknown")),
            (Case::Ran(Some(137), "oom"), State::Failed, Some("oom")),
            (Case::Ran(Some(143), "timeout"), State::TimedOut, Some("timeout after 90s")),
            (Case::Ran(Some(137), "timeout oom"), State::TimedOut, Some("timeout after 90s")),
            (Case::Ran(Some(143), "cancel timeout"), State::Cancelled, Some("cancelled: the runner was stopping")),
            (Case::Ran(Some(0), "cancel"), State::Cancelled, Some("cancelled: the runner was stopping")),
            (Case::Unstartable("image unavailable"), State::Rejected, Some("image unavailable")),
            (Case::Interrupted("the host restarted"), State::Interrupted, Some("interrupted: the host restarted")),
            (
                Case::Refused,
                State::Rejected,
                Some("requests/a.yaml: unknown kind `x` [unknown-kind]\nrequests/a.yaml: `kind` is missing [missing-field]"),
            ),
        ];
        for (case, state, reason) in table {
            let outcome;
            let ending = match case {
                Case::Ran(code, flags) => {
                    outcome = ran(code, flags);
                    Ending::Ran {
                        outcome: &outcome,
                        timeout,
                    }
                }
                Case::Unstartable(why) => Ending::Unstartable(why),
                Case::Interrupted(why) => Ending::Interrupted(why),
                Case::Refused => Ending::Refused(&violations),
            };
            let verdict = conclude(&ending);
            assert_eq!(
                (verdict.state, verdict.reason.as_deref()),
                (state, reason),
                "{ending:?}"
            );
        }
    }

    fn names(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Log(event) => {
                    let v = serde_json::to_value(event).unwrap();
                    format!("log:{}", v["event"].as_str().unwrap())
                }
                Effect::Journal(phase) => format!("journal:{phase:?}"),
                Effect::Check(stage) => format!("check:{stage:?}"),
                Effect::Status => "status".into(),
                Effect::Count(Count::Ended(state, ran)) => {
                    format!("count:{}:{ran:?}", state.as_str())
                }
                Effect::Count(count) => format!("count:{count:?}"),
            })
            .collect()
    }

    #[test]
    fn each_transition_asks_for_its_effects_in_order() {
        let record = AttemptRecord {
            attempt: 2,
            container: "c".into(),
            phase: Phase::Started,
            started_at: None,
            started_ms: 0,
            image: "img".into(),
        };
        let exited = ran(Some(0), "");
        let ok = conclude(&Ending::Ran {
            outcome: &exited,
            timeout: Duration::from_secs(1),
        });
        let rejected = conclude(&Ending::Unstartable("no image"));
        let interrupted = conclude(&Ending::Interrupted("gone"));
        let refused: [Violation; 0] = [];
        let rerun = Recovery::Rerun {
            attempt: 2,
            why: "x".into(),
        };
        let record_it = Recovery::Record {
            attempt: 1,
            why: "x".into(),
        };
        let follow = Recovery::Follow(record);
        let table: Vec<(Transition, &[&str])> = vec![
            (Transition::Queued, &["check:Queued"]),
            (
                Transition::Admitted {
                    file: "f",
                    commit: CommitId::NONE,
                    routed: Some(("echo", "r", Duration::from_secs(5))),
                },
                &["log:received", "log:validated"],
            ),
            (
                Transition::Admitted {
                    file: "f",
                    commit: CommitId::NONE,
                    routed: None,
                },
                &["log:received"],
            ),
            (
                Transition::Resumed(&Recovery::Start { attempt: 1 }),
                &["log:restarted"],
            ),
            (Transition::Resumed(&rerun), &["log:interrupted"]),
            (Transition::Resumed(&record_it), &["log:interrupted"]),
            (Transition::Resumed(&follow), &["log:reattached"]),
            (Transition::Resumed(&Recovery::Busy), &[]),
            (
                Transition::WaitedForLock("db"),
                &["log:waited_for_lock", "count:LockWaited"],
            ),
            (Transition::Starting, &["journal:Starting"]),
            (
                Transition::Launched {
                    container: "c",
                    image: "i",
                    attempt: 1,
                    user: "65534:65534",
                    network: "none",
                },
                &["log:started", "check:InProgress"],
            ),
            (Transition::Followed, &["check:InProgress", "count:Resumed"]),
            (Transition::Running, &["journal:Started", "count:Started"]),
            (Transition::EngineLost, &["journal:EngineLost"]),
            (
                Transition::Ended {
                    ending: Ending::Ran {
                        outcome: &exited,
                        timeout: Duration::from_secs(1),
                    },
                    verdict: &ok,
                    duration_ms: Some(5),
                },
                &[
                    "log:exit",
                    "log:finished",
                    "status",
                    "count:succeeded:Some(5)",
                ],
            ),
            (
                Transition::Ended {
                    ending: Ending::Unstartable("no image"),
                    verdict: &rejected,
                    duration_ms: None,
                },
                &[
                    "log:rejected",
                    "log:finished",
                    "status",
                    "count:rejected:None",
                ],
            ),
            (
                Transition::Ended {
                    ending: Ending::Refused(&refused),
                    verdict: &rejected,
                    duration_ms: None,
                },
                &[
                    "log:rejected",
                    "log:finished",
                    "status",
                    "count:rejected:None",
                ],
            ),
            (
                Transition::Ended {
                    ending: Ending::Interrupted("gone"),
                    verdict: &interrupted,
                    duration_ms: None,
                },
                &["log:finished", "status", "count:interrupted:None"],
            ),
        ];
        for (transition, want) in table {
            assert_eq!(names(&effects(&transition)), want, "{transition:?}");
        }
    }

    #[test]
    fn a_rerun_logs_the_interrupted_attempt_and_the_next() {
        let effects = effects(&Transition::Resumed(&Recovery::Rerun {
            attempt: 3,
            why: "the host restarted".into(),
        }));
        let Effect::Log(event) = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!(
            serde_json::to_value(event).unwrap(),
            serde_json::json!({"event": "interrupted", "attempt": 2, "reason": "the host restarted", "policy": "rerun", "next_attempt": 3})
        );
    }

    #[test]
    fn a_finished_line_keeps_todays_fields() {
        let verdict = conclude(&Ending::Unstartable("no image"));
        let effects = effects(&Transition::Ended {
            ending: Ending::Unstartable("no image"),
            verdict: &verdict,
            duration_ms: None,
        });
        let lines: Vec<serde_json::Value> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Log(event) => Some(serde_json::to_value(event).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"event": "rejected", "reason": "no image"}),
                serde_json::json!({"event": "finished", "state": "rejected", "reason": "no image"}),
            ]
        );
    }

    #[test]
    fn the_attempt_follows_recovery() {
        assert_eq!(attempt_of(None), 1);
        assert_eq!(attempt_of(Some(&Recovery::Busy)), 1);
        assert_eq!(attempt_of(Some(&Recovery::Start { attempt: 2 })), 2);
        assert_eq!(
            attempt_of(Some(&Recovery::Rerun {
                attempt: 3,
                why: String::new()
            })),
            3
        );
    }
}
