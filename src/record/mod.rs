//! The JSONL run log and the status file of each request.
//!
//! Each event is written and flushed as it happens, so output is on disk while the handler is
//! still running; the engine copies both files into the repository when it publishes.
//! Every string in both passes through [`crate::secrets::mask`] on its way to disk.

mod event;
mod ledger;
mod result_dir;

pub use event::LogEvent;
pub use ledger::{relayout, shard, Ledger, ResultFile};
pub use result_dir::ResultDir;

use crate::commit::CommitId;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A request's final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit, OOM, or an error around the handler.
    Failed,
    /// Stopped by its timeout.
    TimedOut,
    /// Never ran: the request broke the contract.
    Rejected,
    /// Stopped because the runner was shutting down (after its drain timeout, or a second
    /// signal).
    Cancelled,
    /// Interrupted by something other than the handler (its runner died and its container is
    /// gone, the host or the engine went down), and the repository's policy is to record it.
    Interrupted,
}

impl State {
    /// The name used in files and commit trailers.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
            State::Interrupted => "interrupted",
        }
    }
}

/// `logs/<id>.status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Request id.
    pub id: String,
    /// Handler kind (empty when the request could not be parsed).
    pub kind: String,
    /// Final state.
    pub state: State,
    /// Exit code of the handler, if it exited.
    pub exit_code: Option<i64>,
    /// Why it ended this way, for anything but a clean success.
    pub reason: Option<String>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the container started.
    pub started_at: Option<String>,
    /// When the request finished.
    pub finished_at: String,
    /// Container run time in milliseconds (0 when it never ran).
    pub duration_ms: u64,
    /// The runner that handled it.
    pub runner: String,
    /// The commit that brought the request to the branch.
    pub commit: CommitId,
    /// The image it ran in.
    pub image: Option<String>,
    /// The request file as it was in the inbox.
    pub file: String,
    /// The lock key it held.
    pub resource: Option<String>,
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Unix milliseconds of an RFC 3339 time.
pub fn ts_ms(ts: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Now in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An append-only JSONL log of one request.
pub struct RunLog {
    id: String,
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
}

impl RunLog {
    /// Start a fresh log at `path`.
    pub fn create(path: &Path, id: &str) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("failed to create run log {}", path.display()))?;
        Ok(RunLog {
            id: id.to_string(),
            path: path.to_path_buf(),
            file,
            len: 0,
        })
    }

    /// Go on with the log at `path` (an earlier process's), creating it if missing. A last
    /// line torn by a crash is cut off first, so every line stays JSON.
    pub fn append(path: &Path, id: &str) -> anyhow::Result<Self> {
        let open = || -> std::io::Result<File> {
            let mut bytes = std::fs::read(path).unwrap_or_default();
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                bytes.truncate(whole);
                std::fs::write(path, &bytes)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        };
        let file =
            open().with_context(|| format!("failed to reopen run log {}", path.display()))?;
        let len = file.metadata().map_or(0, |m| m.len());
        Ok(RunLog {
            id: id.to_string(),
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// When the last complete line of the log at `path` was written, in Unix milliseconds.
    pub fn last_ts_ms(path: &Path) -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("ts")?.as_str().and_then(ts_ms))
    }

    /// When the last line of the container's output in the log at `path` was written, in
    /// Unix milliseconds: where a follower's replay of the engine's log starts. The runner's
    /// own events do not count: one written after the container printed a line the log never
    /// got (a follower's `reattached`) would hide that line from the next follower.
    pub fn last_output_ts_ms(path: &Path) -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .rev()
            .filter_map(LogEvent::parse)
            .filter(|(_, e)| matches!(e, LogEvent::Output { .. }))
            .find_map(|(ts, _)| ts_ms(&ts))
    }

    /// Append one event; `ts`, `id` and `event` come first.
    pub fn write(&mut self, event: &LogEvent) -> anyhow::Result<()> {
        let mut obj = Map::new();
        obj.insert("ts".into(), Value::String(now()));
        obj.insert("id".into(), Value::String(self.id.clone()));
        if let Value::Object(fields) = serde_json::to_value(event)? {
            obj.extend(fields);
        }
        let mut value = Value::Object(obj);
        crate::secrets::mask_json(&mut value);
        let mut line = serde_json::to_vec(&value)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .with_context(|| format!("failed to write run log {}", self.path.display()))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Bytes written to the log so far (an appended log counts what it found).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write `status` as pretty JSON, durably (see [`write_durably`]).
pub fn write_status(path: &Path, status: &Status) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(status)?;
    crate::secrets::mask_json(&mut value);
    let mut bytes = serde_json::to_vec_pretty(&value)?;
    bytes.push(b'\n');
    write_durably(path, &bytes)
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new file, never a torn
/// one, and the new one survives power loss: temp file, fsync, rename, fsync the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("failed to write {}", path.display()))
}

/// Read a status file.
pub fn read_status(path: &Path) -> anyhow::Result<Status> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("failed to parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_json_with_ts_id_event_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let mut log = RunLog::create(&p, "a").unwrap();
        log.write(&LogEvent::Output {
            stream: "stdout".into(),
            line: "hi \"x\"".into(),
        })
        .unwrap();
        log.write(&LogEvent::Finished {
            state: "succeeded".into(),
            reason: None,
            duration_ms: Some(5),
        })
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["line"], "hi \"x\"");
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("{\"ts\":")
                && first.contains("\"id\":\"a\",\"event\":\"output\",\"stream\":\"stdout\","),
            "{first}"
        );
        assert_eq!(lines[1]["event"], "finished");
        assert_eq!(
            lines[1]["reason"],
            Value::Null,
            "a success has a null reason"
        );
        assert_eq!(lines[1]["duration_ms"], 5);
        let back: Vec<LogEvent> = text
            .lines()
            .filter_map(LogEvent::parse)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(back.len(), 2, "every line reads back as a typed event");
    }

    #[test]
    fn a_follower_replays_from_the_last_output_line_not_from_its_own_events() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(
            &p,
            concat!(
                "{\"ts\":\"2026-12-01T10:00:00.000Z\",\"id\":\"a\",\"event\":\"started\"}\n",
                "{\"ts\":\"2026-12-01T10:00:01.000Z\",\"id\":\"a\",\"event\":\"output\",\"stream\":\"stdout\",\"line\":\"attempt 1\"}\n",
                "{\"ts\":\"2026-12-01T10:00:05.000Z\",\"id\":\"a\",\"event\":\"reattached\"}\n",
            ),
        )
        .unwrap();
        let output = RunLog::last_output_ts_ms(&p).unwrap();
        let any = RunLog::last_ts_ms(&p).unwrap();
        assert_eq!(any - output, 4000, "the follower's own event is 4 s later");
        let none = dir.path().join("b.jsonl");
        std::fs::write(
            &none,
            "{\"ts\":\"2026-12-01T10:00:00.000Z\",\"id\":\"b\",\"event\":\"started\"}\n",
        )
        .unwrap();
        assert_eq!(
            RunLog::last_output_ts_ms(&none),
            None,
            "no output: replay it all"
        );
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = Status {
            id: "a".into(),
            kind: "echo".into(),
            state: State::TimedOut,
            exit_code: Some(137),
            reason: Some("timeout after 1s".into()),
            attempt: 1,
            started_at: Some(now()),
            finished_at: now(),
            duration_ms: 1000,
            runner: "r".into(),
            commit: CommitId::NONE,
            image: None,
            file: "requests/a.yaml".into(),
            resource: Some("echo".into()),
        };
        let p = dir.path().join("a.status.json");
        write_status(&p, &s).unwrap();
        assert_eq!(read_status(&p).unwrap(), s);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("\"state\": \"timed_out\""));
    }
}
