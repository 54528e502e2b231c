//! An executor in memory, for the engine's own tests: no Docker. Each run follows the
//! [`Script`] of its request (found by the request label every container carries); what
//! happened is kept as [`Seen`] events for the test to check. Compiled only for tests.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{
    Cancel, ContainerSpec, ExecError, Executor, Fate, OutputEvent, Resume, RunOutcome, Stream,
    LABEL_REQUEST,
};

/// What a fake container does.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// Lines it writes to stdout.
    pub lines: Vec<String>,
    /// How long it runs after writing them.
    pub runs_for: Duration,
    /// Its exit code.
    pub exit_code: i64,
    /// The OOM killer ends it.
    pub oom: bool,
    /// The engine goes away while it runs.
    pub engine_fails: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            lines: vec!["done".into()],
            runs_for: Duration::ZERO,
            exit_code: 0,
            oom: false,
            engine_fails: false,
        }
    }
}

/// What the engine asked of the fake, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A container of request `.0` started.
    Started(String),
    /// It ended.
    Ended(String),
    /// A container (by name) an earlier process started was followed.
    Followed(String),
    /// A container (by name) was removed.
    Removed(String),
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Script>,
    fates: HashMap<String, Fate>,
    missing_images: HashSet<String>,
    seen: Vec<Seen>,
    live: HashSet<String>,
    running: usize,
    most_at_once: usize,
}

/// The in-memory executor.
#[derive(Default)]
pub(crate) struct FakeExecutor {
    state: Mutex<State>,
}

impl FakeExecutor {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Request `id`'s containers follow `script`.
    pub fn script(&self, id: &str, script: Script) {
        self.with(|s| s.scripts.insert(id.to_string(), script));
    }

    /// What the fake says became of container `name` (the default: missing).
    pub fn fate(&self, name: &str, fate: Fate) {
        self.with(|s| {
            if !matches!(fate, Fate::Missing) {
                s.live.insert(name.to_string());
            }
            s.fates.insert(name.to_string(), fate)
        });
    }

    /// `reference` can be neither found nor pulled.
    pub fn without_image(&self, reference: &str) {
        self.with(|s| s.missing_images.insert(reference.to_string()));
    }

    /// Everything asked of the fake so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    /// The most containers that ran at once.
    pub fn most_at_once(&self) -> usize {
        self.with(|s| s.most_at_once)
    }

    /// Containers that exist now.
    pub fn live(&self) -> Vec<String> {
        self.with(|s| s.live.iter().cloned().collect())
    }
}

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    async fn ensure_image(&self, reference: &str) -> Result<(), ExecError> {
        if self.with(|s| s.missing_images.contains(reference)) {
            return Err(ExecError::ImageUnavailable(format!(
                "`{reference}` is not on this host and could not be pulled: no such image"
            )));
        }
        Ok(())
    }

    async fn ensure_built(&self, _tag: &str, _context: &Path) -> Result<(), ExecError> {
        Ok(())
    }

    async fn run(
        &self,
        spec: &ContainerSpec,
        on_started: &mut (dyn FnMut() + Send),
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let id = spec.labels.get(LABEL_REQUEST).cloned().unwrap_or_default();
        let script = self.with(|s| {
            s.live.insert(spec.name.clone());
            s.running += 1;
            s.most_at_once = s.most_at_once.max(s.running);
            s.seen.push(Seen::Started(id.clone()));
            s.scripts.get(&id).cloned().unwrap_or_default()
        });
        on_started();
        let mut outcome = RunOutcome::default();
        for line in &script.lines {
            outcome.output_bytes += line.len() as u64 + 1;
            on_output(OutputEvent::Line(Stream::Stdout, line.clone()));
        }
        if script.engine_fails {
            self.with(|s| s.running -= 1);
            return Err(ExecError::Engine(anyhow::anyhow!(
                "the engine went away while {} ran",
                spec.name
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(script.runs_for.min(spec.timeout)) => {
                if script.runs_for > spec.timeout {
                    outcome.timed_out = true;
                    outcome.exit_code = Some(143);
                } else {
                    outcome.exit_code = Some(if script.oom { 137 } else { script.exit_code });
                    outcome.oom_killed = script.oom;
                }
            }
            _ = cancel => {
                outcome.cancelled = true;
                outcome.exit_code = Some(143);
            }
        }
        self.with(|s| {
            s.running -= 1;
            s.seen.push(Seen::Ended(id));
        });
        Ok(outcome)
    }

    async fn resume(
        &self,
        resume: &Resume,
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        _cancel: Cancel<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let exit_code = self.with(|s| {
            s.seen.push(Seen::Followed(resume.name.clone()));
            match s.fates.get(&resume.name) {
                Some(Fate::Exited { exit_code, .. }) => *exit_code,
                _ => Some(0),
            }
        });
        on_output(OutputEvent::Line(Stream::Stdout, "followed".into()));
        Ok(RunOutcome {
            exit_code,
            output_bytes: 9,
            ..Default::default()
        })
    }

    async fn fate(&self, name: &str) -> anyhow::Result<Fate> {
        Ok(self.with(|s| s.fates.get(name).cloned().unwrap_or(Fate::Missing)))
    }

    async fn remove(&self, name: &str) {
        self.with(|s| {
            if s.live.remove(name) {
                s.seen.push(Seen::Removed(name.to_string()));
            }
            s.fates.remove(name);
        });
    }

    async fn reap_orphans(
        &self,
        _runner: &str,
        _grace: Duration,
        _keep: &[String],
    ) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn managed_containers(&self, _runner: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(self.live())
    }

    async fn mount_sources(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    async fn runtimes(&self) -> anyhow::Result<Vec<String>> {
        Ok(vec!["runc".into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_runtime_the_engine_lacks_stops_the_runner_at_its_start() {
        let fake = FakeExecutor::default();
        assert!(super::super::check_runtimes(&fake, &[]).await.is_ok());
        assert!(super::super::check_runtimes(&fake, &["runc".into()])
            .await
            .is_ok());
        let err = super::super::check_runtimes(&fake, &["runc".into(), "runsc".into()])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("limits.runtimes names runsc, which the container engine does not have (it has: runc)"),
            "{err}"
        );
    }
}
