//! Following a container to its end: output as it comes (split into lines, capped), the
//! timeout and a cancel stopping it the way `docker stop` does, and the exit code, with an
//! unexplained SIGKILL checked against the engine's OOM events.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bollard::query_parameters::{EventsOptionsBuilder, StopContainerOptionsBuilder};
use futures_util::StreamExt;

use super::super::lines::LineSplitter;
use super::super::{us_since, OutputEvent, RunOutcome, Stream};
use super::DockerExecutor;

/// A container being followed to its end.
pub(super) struct Watch<'a> {
    pub(super) name: &'a str,
    pub(super) ends_at: tokio::time::Instant,
    pub(super) grace: Duration,
    pub(super) cap: u64,
}

/// Split the engine's timestamp off a log chunk (`timestamps=true` puts RFC 3339 with
/// nanoseconds and a space before each line); the time in Unix nanoseconds, if it parsed.
pub(super) fn stamped(
    chunk: bollard::container::LogOutput,
) -> (bollard::container::LogOutput, Option<i128>) {
    use bollard::container::LogOutput as L;
    let split = |message: bytes::Bytes| -> (bytes::Bytes, Option<i128>) {
        let Some(space) = message.iter().position(|b| *b == b' ') else {
            return (message, None);
        };
        let ts = std::str::from_utf8(&message[..space]).ok().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        match ts {
            Some(ts) => (message.slice(space + 1..), Some(ts.unix_timestamp_nanos())),
            None => (message, None),
        }
    };
    match chunk {
        L::StdOut { message } => {
            let (message, ts) = split(message);
            (L::StdOut { message }, ts)
        }
        L::StdErr { message } => {
            let (message, ts) = split(message);
            (L::StdErr { message }, ts)
        }
        L::Console { message } => {
            let (message, ts) = split(message);
            (L::Console { message }, ts)
        }
        other => (other, None),
    }
}

/// How long an unexplained SIGKILL waits for the engine's OOM event.
pub(super) const OOM_PATIENCE: Duration = Duration::from_secs(3);

impl DockerExecutor {
    /// Stream `output` until it ends, enforcing the deadline and `cancel`; then wait for the
    /// exit and read the outcome.
    pub(super) async fn watch(
        &self,
        w: &Watch<'_>,
        output: impl futures_util::Stream<
            Item = Result<(bollard::container::LogOutput, Option<i128>), bollard::errors::Error>,
        >,
        mut on_output: impl FnMut(OutputEvent) + Send,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<RunOutcome> {
        tokio::pin!(cancel);
        tokio::pin!(output);
        let mut lines = LineSplitter::new(w.cap);
        let mut outcome = RunOutcome::default();
        let running = std::time::Instant::now();
        let deadline = tokio::time::sleep_until(w.ends_at);
        tokio::pin!(deadline);
        let mut stopper: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok((chunk, _))) => {
                        let (stream, bytes) = match chunk {
                            bollard::container::LogOutput::StdErr { message } => (Stream::Stderr, message),
                            bollard::container::LogOutput::StdOut { message }
                            | bollard::container::LogOutput::Console { message } => (Stream::Stdout, message),
                            bollard::container::LogOutput::StdIn { .. } => continue,
                        };
                        lines.push(stream, &bytes, &mut on_output);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(container = %w.name, error = %e, "output stream broke");
                        break;
                    }
                    None => break,
                },
                // A timeout and a cancellation take the same path: SIGTERM, grace, SIGKILL.
                _ = &mut deadline, if stopper.is_none() => {
                    outcome.timed_out = true;
                    stopper = Some(self.stopper(w.name, w.grace));
                }
                _ = &mut cancel, if stopper.is_none() => {
                    outcome.cancelled = true;
                    stopper = Some(self.stopper(w.name, w.grace));
                }
            }
        }
        lines.finish(&mut on_output);
        outcome.output_bytes = lines.seen;
        outcome.truncated = lines.truncated;
        outcome.phases.run = us_since(running);
        let waiting = std::time::Instant::now();

        // Output closed: the process is gone or closed its streams; wait for the exit within
        // what is left of the timeout, then stop it the hard way.
        let mut exited: Option<i64> = None;
        let wait = async {
            let mut wait = self.docker.wait_container(w.name, None);
            exited = match wait.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Some(code)
                }
                _ => None,
            };
        };
        let remaining = if outcome.timed_out || outcome.cancelled {
            w.grace + Duration::from_secs(5)
        } else {
            w.ends_at
                .saturating_duration_since(tokio::time::Instant::now())
        };
        if tokio::time::timeout(remaining, wait).await.is_err() && stopper.is_none() {
            outcome.timed_out = true;
            let opts = StopContainerOptionsBuilder::default()
                .t(w.grace.as_secs() as i32)
                .build();
            let _ = self.docker.stop_container(w.name, Some(opts)).await;
        }
        if let Some(s) = stopper {
            let _ = s.await;
        }
        let stopped_by_us = outcome.timed_out || outcome.cancelled;
        // A clean exit, as the wait says, needs no more; any other end gets the engine's
        // full account (was it the OOM killer?).
        if exited == Some(0) && !stopped_by_us {
            outcome.exit_code = Some(0);
            outcome.phases.wait = us_since(waiting);
            return Ok(outcome);
        }
        let state = self.state_of(w.name).await?;
        outcome.exit_code = state.exit_code;
        outcome.oom_killed = state.oom_killed.unwrap_or(false);
        // SIGKILLed by nobody we know of: the kernel's OOM killer, most likely. The engine
        // sets its OOM flag only when its OOM event comes before the exit; one that comes
        // after (seen on a busy host) is reported as an `oom` event alone. Look for it.
        if !stopped_by_us && state.exit_code == Some(137) && !outcome.oom_killed {
            outcome.oom_killed = self
                .oom_reported(w.name, state.started_at.as_deref(), OOM_PATIENCE)
                .await;
        }
        outcome.phases.wait = us_since(waiting);
        Ok(outcome)
    }

    /// Whether the engine reported an OOM kill in container `name` since it started
    /// (`started_at`, as the engine wrote it), waiting up to `patience` for the event.
    pub(super) async fn oom_reported(
        &self,
        name: &str,
        started_at: Option<&str>,
        patience: Duration,
    ) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The engine takes Unix seconds here (not RFC 3339).
        let since = started_at
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(now.saturating_sub(3600), |t| {
                u64::try_from(t.unix_timestamp()).unwrap_or(0)
            })
            .to_string();
        let until = (now + patience.as_secs() + 1).to_string();
        let filters = HashMap::from([("container", vec![name]), ("event", vec!["oom"])]);
        let opts = EventsOptionsBuilder::default()
            .since(&since)
            .until(&until)
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(opts));
        matches!(
            tokio::time::timeout(patience, events.next()).await,
            Ok(Some(Ok(_)))
        )
    }

    /// What the engine says of container `name` now.
    pub(super) async fn state_of(
        &self,
        name: &str,
    ) -> anyhow::Result<bollard::models::ContainerState> {
        Ok(self
            .docker
            .inspect_container(name, None)
            .await
            .with_context(|| format!("failed to inspect container {name}"))?
            .state
            .unwrap_or_default())
    }

    /// Stop container `name` in the background: SIGTERM, its grace period, then SIGKILL.
    pub(super) fn stopper(&self, name: &str, grace: Duration) -> tokio::task::JoinHandle<()> {
        let docker = self.docker.clone();
        let name = name.to_string();
        let grace = grace.as_secs().min(i32::MAX as u64) as i32;
        tokio::spawn(async move {
            let opts = StopContainerOptionsBuilder::default().t(grace).build();
            if let Err(e) = docker.stop_container(&name, Some(opts)).await {
                tracing::warn!(container = %name, error = %e, "failed to stop container");
            }
        })
    }
}
