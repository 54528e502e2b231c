//! Check runs for a pass's requests: queued when found, in progress when the container
//! starts, completed once the log is on the branch (so the link points at a real commit).
//!
//! The forge never holds up execution or the push: events go to a task of their own, each
//! desired state is saved in the state dir before it is sent and removed once the forge took
//! it, and whatever is left (an outage, a restart) is sent again by the next pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::forge::{Annotation, CheckState, CheckUpdate, Conclusion, ForgeError, GitHub, Report};
use crate::record::{State, Status};

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
        commit: String,
        file: String,
        kind: String,
    },
    /// The container started.
    Started {
        id: String,
        commit: String,
        started_at: String,
    },
    /// Recorded and pushed in `pushed`; `log` is the JSONL run log.
    Finished {
        status: Box<Status>,
        log: Vec<u8>,
        pushed: String,
        output_path: String,
    },
}

/// A desired state not yet confirmed by the forge.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    update: CheckUpdate,
    run_id: Option<u64>,
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
            head_sha: commit.clone(),
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
            head_sha: commit.clone(),
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
            output_path,
        } => finished(status, log, pushed, output_path, html_url),
    }
}

fn finished(
    s: &Status,
    log: &[u8],
    pushed: &str,
    output_path: &str,
    html_url: &str,
) -> CheckUpdate {
    let conclusion = match s.state {
        State::Succeeded => Conclusion::Success,
        State::Failed => Conclusion::Failure,
        State::TimedOut => Conclusion::TimedOut,
        State::Rejected => Conclusion::ActionRequired,
    };
    let events: Vec<Value> = String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let lines: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "output")
        .map(|e| e["line"].as_str().unwrap_or_default().to_string())
        .collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    let log_path = format!("{output_path}{}.jsonl", s.id);
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
    let annotations = events
        .iter()
        .filter(|e| e["event"] == "rejected")
        .flat_map(|e| e["violations"].as_array().cloned().unwrap_or_default())
        .filter(|v| v["file"] == s.file.as_str())
        .map(|v| {
            let line = v["line"].as_u64().unwrap_or(1) as usize;
            let hint = v["hint"]
                .as_str()
                .map(|h| format!("\nhint: {h}"))
                .unwrap_or_default();
            Annotation {
                path: s.file.clone(),
                start_line: line,
                end_line: line,
                annotation_level: "failure".into(),
                message: format!("{}{hint}", v["message"].as_str().unwrap_or_default()),
                title: v["rule"].as_str().map(str::to_string),
            }
        })
        .collect();
    CheckUpdate {
        name: name(&s.id),
        head_sha: s.commit.clone(),
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

fn save(dir: &Path, p: &Pending) {
    let path = dir.join(format!("{}.json", p.update.external_id));
    if let Ok(bytes) = serde_json::to_vec(p) {
        if let Err(e) = std::fs::write(&path, bytes) {
            tracing::warn!(path = %path.display(), error = %e, "failed to save a pending check run");
        }
    }
}

/// Save `p`, send it, and forget it once the forge took it; the run's id when it did.
async fn send(target: &ForgeTarget, dir: &Path, p: &Pending) -> Option<u64> {
    save(dir, p);
    match target.publish(&p.update, p.run_id).await {
        Ok(id) => {
            let _ = std::fs::remove_file(dir.join(format!("{}.json", p.update.external_id)));
            id
        }
        Err(e) => {
            tracing::warn!(check = %p.update.name, error = %e, "check run not updated; the next pass sends it again");
            None
        }
    }
}

/// Send check-run updates until the pass ends; replay what earlier passes left first.
pub(crate) async fn reporter(
    target: ForgeTarget,
    dir: PathBuf,
    mut rx: mpsc::UnboundedReceiver<CheckEvent>,
) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "failed to create the check-run state dir");
    }
    {
        let mut left: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        left.sort();
        for path in left {
            let Ok(p) = std::fs::read(&path)
                .map_err(|_| ())
                .and_then(|b| serde_json::from_slice::<Pending>(&b).map_err(|_| ()))
            else {
                continue;
            };
            tracing::info!(check = %p.update.name, "catching up a check run left by an earlier pass");
            send(&target, &dir, &p).await;
        }
        let mut ids: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        while let Some(event) = rx.recv().await {
            let update = update_for(&event, &target.html_url);
            let key = update.external_id.clone();
            let run_id = ids.get(&key).copied();
            if let Some(id) = send(&target, &dir, &Pending { update, run_id }).await {
                ids.insert(key, id);
            }
        }
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
    let annotations = v
        .violations
        .iter()
        .map(|x| Annotation {
            path: x.file.clone(),
            start_line: x.line.unwrap_or(1),
            end_line: x.line.unwrap_or(1),
            annotation_level: "failure".into(),
            message: match &x.hint {
                Some(h) => format!("{}\nhint: {h}", x.message),
                None => x.message.clone(),
            },
            title: Some(x.rule.to_string()),
        })
        .collect();
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
