//! Check runs for a pass's requests: queued when found, in progress when the container
//! starts, completed once the log is on the branch (so the link points at a real commit).
//!
//! The forge never holds up execution or the push: each event's desired state is written to
//! the state dir the moment it happens (a [`CheckSink`] does it, synchronously), a task of its
//! own sends the newest desired state of each run, and a state is removed only once the forge
//! took it and nothing newer replaced it. Whatever is left (an outage, a slow forge, a runner
//! killed with updates still queued) is sent again by the next pass.

use crate::commit::CommitId;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::contract::Violation;
use crate::forge::{Annotation, CheckState, CheckUpdate, Conclusion, ForgeError, GitHub, Report};
use crate::record::{LogEvent, State, Status};

/// Where check runs go.
#[derive(Clone)]
pub struct ForgeTarget {
    /// The API client.
    pub client: GitHub,
    /// The repository's web address (`https://github.com/OWNER/REPO`), for links.
    pub html_url: String,
    /// Check runs, or commit statuses.
    pub report: Report,
}

impl ForgeTarget {
    /// Show `update` on the forge, as a check run (`known`: its id, when known; the id is
    /// returned) or as a commit status (no id).
    pub async fn publish(
        &self,
        update: &CheckUpdate,
        known: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
        match self.report {
            Report::CheckRuns => self.client.publish_check(update, known).await.map(Some),
            Report::Statuses => self.client.publish_status(update).await.map(|()| None),
        }
    }
}

impl std::fmt::Debug for ForgeTarget {
    // The client holds the token: show only where it points.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let repo = self.client.repo();
        write!(
            f,
            "ForgeTarget({} {}/{}, {})",
            repo.api_url,
            repo.owner,
            repo.name,
            self.report.as_str()
        )
    }
}

/// What happened to a request, as far as its check run cares.
#[derive(Debug, Clone)]
pub(crate) enum CheckEvent {
    /// Found and waiting.
    Queued {
        id: String,
        commit: CommitId,
        file: String,
        kind: String,
    },
    /// The container started.
    Started {
        id: String,
        commit: CommitId,
        started_at: String,
    },
    /// Recorded and pushed in `pushed`; `log` is the JSONL run log.
    Finished {
        status: Box<Status>,
        log: Vec<u8>,
        pushed: String,
        /// Where the log is on the branch (`logs/<shard>/<id>.jsonl`).
        log_path: String,
    },
}

/// Desired states not yet confirmed by the forge: one file per run, the newest state wins.
pub(crate) struct Journal {
    dir: PathBuf,
    // Recording and settling one run's file must not interleave.
    lock: std::sync::Mutex<()>,
}

impl Journal {
    pub(crate) fn new(dir: PathBuf) -> Self {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "failed to create the check-run state dir");
        }
        Journal {
            dir,
            lock: std::sync::Mutex::new(()),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `update` the run's desired state (written whole, then renamed into place).
    /// A `held` state is not sent until [`Journal::release`] says its result is on the branch.
    fn record(&self, update: &CheckUpdate, held: bool) {
        let _g = self.guard();
        let path = self.path(&update.external_id);
        let tmp = path.with_extension("tmp");
        let entry = Entry {
            update: update.clone(),
            held,
        };
        let written = serde_json::to_vec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "failed to save a pending check run");
        }
    }

    /// The run's desired state, if the forge has not taken it yet.
    fn load(&self, key: &str) -> Option<CheckUpdate> {
        let _g = self.guard();
        let bytes = std::fs::read(self.path(key)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        (!entry.held).then_some(entry.update)
    }

    /// Send the held states whose results `pushed` says reached the branch (a runner that died
    /// between its push and the update left them).
    pub(crate) fn release(&self, pushed: impl Fn(&str) -> bool) {
        for key in self.keys() {
            let _g = self.guard();
            let path = self.path(&key);
            let Some(mut entry) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
            else {
                continue;
            };
            if entry.held && pushed(&key) {
                entry.held = false;
                if let Ok(bytes) = serde_json::to_vec(&entry) {
                    let _ = std::fs::write(&path, bytes);
                }
            }
        }
    }

    /// The forge took `sent`: forget it, unless a newer state replaced it meanwhile.
    fn settle(&self, sent: &CheckUpdate) {
        let _g = self.guard();
        let path = self.path(&sent.external_id);
        let current = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok());
        if current.is_some_and(|c| !c.held && c.update == *sent) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Every run with a state left to send, in name order.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }
}

/// One run's desired state in the journal.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    update: CheckUpdate,
    #[serde(default)]
    held: bool,
}

/// Where a pass's check events go: the journal at once, then the reporter.
#[derive(Clone)]
pub(crate) struct CheckSink {
    journal: std::sync::Arc<Journal>,
    html_url: String,
    tx: mpsc::UnboundedSender<String>,
}

impl CheckSink {
    /// A sink, and the channel of run keys its reporter reads.
    pub(crate) fn new(
        journal: std::sync::Arc<Journal>,
        html_url: String,
    ) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            CheckSink {
                journal,
                html_url,
                tx,
            },
            rx,
        )
    }

    /// Record what `event` means for its check run, durably, and wake the reporter.
    pub(crate) fn emit(&self, event: CheckEvent) {
        let update = update_for(&event, &self.html_url);
        self.journal.record(&update, false);
        let _ = self.tx.send(update.external_id);
    }

    /// Record what `event` will mean once its result is pushed, without sending it: the push
    /// may fail, and a runner may die between the push and [`CheckSink::emit`].
    pub(crate) fn hold(&self, event: CheckEvent) {
        self.journal
            .record(&update_for(&event, &self.html_url), true);
    }
}

/// How long a pass waits at its end for check runs still being sent.
const DRAIN: Duration = Duration::from_secs(30);

fn name(id: &str) -> String {
    format!("codex-runner/{id}")
}

fn update_for(event: &CheckEvent, html_url: &str) -> CheckUpdate {
    match event {
        CheckEvent::Queued {
            id,
            commit,
            file,
            kind,
        } => CheckUpdate {
            name: name(id),
            head_sha: commit.to_string(),
            external_id: id.clone(),
            state: CheckState::Queued,
            started_at: None,
            title: "queued".into(),
            summary: format!("Request `{id}` ({kind}, `{file}`) is waiting for its turn."),
            text: None,
            details_url: None,
            annotations: Vec::new(),
        },
        CheckEvent::Started {
            id,
            commit,
            started_at,
        } => CheckUpdate {
            name: name(id),
            head_sha: commit.to_string(),
            external_id: id.clone(),
            state: CheckState::InProgress,
            started_at: Some(started_at.clone()),
            title: "running".into(),
            summary: format!("Request `{id}` started at {started_at}."),
            text: None,
            details_url: None,
            annotations: Vec::new(),
        },
        CheckEvent::Finished {
            status,
            log,
            pushed,
            log_path,
        } => finished(status, log, pushed, log_path, html_url),
    }
}

fn finished(s: &Status, log: &[u8], pushed: &str, log_path: &str, html_url: &str) -> CheckUpdate {
    let conclusion = match s.state {
        State::Succeeded => Conclusion::Success,
        State::Failed => Conclusion::Failure,
        State::TimedOut => Conclusion::TimedOut,
        State::Rejected => Conclusion::ActionRequired,
        State::Cancelled => Conclusion::Cancelled,
        // Someone has to look at what the interrupted handler did.
        State::Interrupted => Conclusion::ActionRequired,
    };
    let events: Vec<LogEvent> = String::from_utf8_lossy(log)
        .lines()
        .filter_map(LogEvent::parse)
        .map(|(_, e)| e)
        .collect();
    let lines: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            LogEvent::Output { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    let link = format!("{html_url}/blob/{pushed}/{log_path}");
    let mut summary = format!(
        "**{}** in {:.1}s on runner `{}`",
        s.state.as_str(),
        s.duration_ms as f64 / 1000.0,
        s.runner
    );
    if let Some(code) = s.exit_code {
        summary.push_str(&format!(", exit code {code}"));
    }
    if let Some(reason) = &s.reason {
        summary.push_str(&format!("\n\n```\n{reason}\n```"));
    }
    summary.push_str(&format!("\n\nLog: [{log_path}]({link})"));
    // The rules a refused request breaks, read back from its log: a result published by a
    // later process has nothing else to go by.
    let annotations = events
        .iter()
        .flat_map(|e| match e {
            LogEvent::Rejected { violations, .. } => violations.as_slice(),
            _ => &[],
        })
        .filter(|v| v.file == s.file)
        .map(annotation)
        .collect();
    CheckUpdate {
        name: name(&s.id),
        head_sha: s.commit.to_string(),
        external_id: s.id.clone(),
        state: CheckState::Completed(conclusion),
        started_at: s.started_at.clone(),
        title: format!(
            "{} ({:.1}s)",
            s.state.as_str(),
            s.duration_ms as f64 / 1000.0
        ),
        summary,
        text: (!tail.is_empty()).then(|| {
            format!(
                "Last lines of the log:\n\n```text\n{}\n```",
                tail.join("\n")
            )
        }),
        details_url: Some(link),
        annotations,
    }
}

/// The annotation that shows `v` on its file's line (the first line when it has none).
pub(crate) fn annotation(v: &Violation) -> Annotation {
    let line = v.line.unwrap_or(1);
    Annotation {
        path: v.file.clone(),
        start_line: line,
        end_line: line,
        annotation_level: "failure".into(),
        message: match &v.hint {
            Some(h) => format!("{}\nhint: {h}", v.message),
            None => v.message.clone(),
        },
        title: Some(v.rule.to_string()),
    }
}

/// Send the run's newest desired state, if any is left; forget it once the forge took it.
async fn send(
    target: &ForgeTarget,
    journal: &Journal,
    key: &str,
    ids: &mut std::collections::HashMap<String, u64>,
) {
    // Several events may have named this run: only the newest state goes out, once.
    let Some(update) = journal.load(key) else {
        return;
    };
    match target.publish(&update, ids.get(key).copied()).await {
        Ok(id) => {
            journal.settle(&update);
            if let Some(id) = id {
                ids.insert(key.to_string(), id);
            }
        }
        Err(e) => {
            tracing::warn!(check = %update.name, error = %e, "check run not updated; the next pass sends it again");
        }
    }
}

/// Send check-run updates until the pass ends; first what earlier passes left.
pub(crate) async fn reporter(
    target: ForgeTarget,
    journal: std::sync::Arc<Journal>,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut ids = std::collections::HashMap::new();
    for key in journal.keys() {
        tracing::info!(check = %key, "catching up a check run left by an earlier pass");
        send(&target, &journal, &key, &mut ids).await;
    }
    while let Some(key) = rx.recv().await {
        send(&target, &journal, &key, &mut ids).await;
    }
}

/// Wait for the reporter to finish, at most [`DRAIN`]; what it did not send stays saved.
pub(crate) async fn drain(task: tokio::task::JoinHandle<()>) {
    let abort = task.abort_handle();
    if tokio::time::timeout(DRAIN, task).await.is_err() {
        tracing::warn!("the forge is slow; remaining check-run updates are kept for the next pass");
        abort.abort();
    }
}

/// The `codex-runner/validate` check run of a pull request's verdict.
pub fn validation_update(job: &super::PullJob, v: &super::PullVerdict) -> CheckUpdate {
    let ok = v.violations.is_empty();
    let mut summary = String::new();
    for (file, what) in &v.valid {
        summary.push_str(&format!("- ✅ `{file}`: {what}\n"));
    }
    for violation in &v.violations {
        summary.push_str(&format!(
            "- ❌ {}\n",
            violation.to_string().replace('\n', " — ")
        ));
    }
    if summary.is_empty() {
        summary.push_str("This pull request adds or changes no request files.\n");
    }
    let annotations = v.violations.iter().map(annotation).collect();
    CheckUpdate {
        name: "codex-runner/validate".into(),
        head_sha: v.head.clone(),
        external_id: format!("pull-{}", job.number),
        state: CheckState::Completed(if ok {
            Conclusion::Success
        } else {
            Conclusion::Failure
        }),
        started_at: None,
        title: if ok {
            format!("{} request(s) valid", v.valid.len())
        } else {
            format!("{} problem(s) found", v.violations.len())
        },
        summary,
        text: None,
        details_url: None,
        annotations,
    }
}
