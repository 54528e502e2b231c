//! Following a pod's handler to its end: its log as the kubelet writes it (reconnected where
//! it broke, long lines whole), the timeout and a cancel deleting the Job, a pod deleted by
//! someone else stopping the Job at once, and the exit code from a watch on the pod.

use std::time::Duration;

use futures_util::AsyncReadExt;
use kube::api::LogParams;

use super::super::lines::LineSplitter;
use super::super::{us_since, Cancel, OutputEvent, RunOutcome, Stream};
use super::ending::{Ended, Ending};
use super::job::CONTAINER;
use super::stamps::Stamps;
use super::{failed_condition, KubernetesExecutor};

impl KubernetesExecutor {
    /// Read pod `pod`'s log from after `after` (Unix nanoseconds) until its handler ends,
    /// enforcing the deadline and `cancel`; then read how it ended.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn follow(
        &self,
        job: &str,
        pod: &str,
        after: Option<i128>,
        ends_at: tokio::time::Instant,
        grace: Duration,
        cap: u64,
        on_output: &mut (dyn FnMut(OutputEvent) + Send),
        mut cancel: Cancel<'_>,
    ) -> anyhow::Result<RunOutcome> {
        let mut ending = Ending::watch(self.pods(), pod);
        let mut lines = LineSplitter::new(cap);
        let mut stamps = Stamps::after(after);
        let mut outcome = RunOutcome::default();
        let running = std::time::Instant::now();
        let deadline = tokio::time::sleep_until(ends_at);
        tokio::pin!(deadline);
        let mut stopper: Option<tokio::task::JoinHandle<()>> = None;
        let mut buf = vec![0u8; 64 << 10];
        let mut emit = |lines: &mut LineSplitter, stamps: &mut Stamps, bytes: &[u8]| {
            stamps.push(bytes, &mut |text| {
                lines.push(Stream::Stdout, text, &mut |e| on_output(e))
            });
        };
        'reading: loop {
            let since = stamps.last.or(after);
            let lp = LogParams {
                container: Some(CONTAINER.into()),
                follow: true,
                timestamps: true,
                since_seconds: since.map(since_seconds),
                ..LogParams::default()
            };
            let stream = match self.pods().log_stream(pod, &lp).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(pod, error = %e, "no log stream");
                    None
                }
            };
            if let Some(stream) = stream {
                // A reconnect must not repeat what was read.
                stamps.reconnect();
                tokio::pin!(stream);
                loop {
                    tokio::select! {
                        n = stream.read(&mut buf) => match n {
                            Ok(0) => break,
                            Ok(n) => emit(&mut lines, &mut stamps, &buf[..n]),
                            Err(e) => {
                                tracing::warn!(pod, error = %e, "the pod's log stream broke");
                                break;
                            }
                        },
                        _ = &mut deadline, if stopper.is_none() => {
                            outcome.timed_out = true;
                            stopper = Some(self.stopper(job));
                        }
                        _ = &mut cancel, if stopper.is_none() => {
                            outcome.cancelled = true;
                            stopper = Some(self.stopper(job));
                        }
                        _ = ending.deleted(), if stopper.is_none() => {
                            outcome.lost = Some(lost(pod));
                            stopper = Some(self.stopper(job));
                        }
                    }
                }
            }
            // The stream ended: the handler is done, or the connection went; reconnect while
            // it runs and this runner has not stopped it.
            if stopper.is_some() {
                break 'reading;
            }
            if ending.deleting() {
                break 'reading;
            }
            if ending.now() != Ended::Running {
                break 'reading;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut deadline => {
                    outcome.timed_out = true;
                    stopper = Some(self.stopper(job));
                    break 'reading;
                }
                _ = &mut cancel => {
                    outcome.cancelled = true;
                    stopper = Some(self.stopper(job));
                    break 'reading;
                }
            }
        }
        if stopper.is_none() && ending.deleting() {
            outcome.lost = Some(lost(pod));
            stopper = Some(self.stopper(job));
        }
        lines.finish(&mut |e| on_output(e));
        outcome.output_bytes = lines.seen;
        outcome.truncated = lines.truncated;
        outcome.phases.run = us_since(running);
        let waiting = std::time::Instant::now();
        // The exit code, as the kubelet reports it (a moment after the log ends).
        let stopped = outcome.timed_out || outcome.cancelled;
        let patience = if stopped {
            grace + Duration::from_secs(10)
        } else {
            Duration::from_secs(30)
        };
        if let Ended::Exited { code, oom } = ending.wait(patience).await {
            outcome.exit_code = Some(code);
            outcome.oom_killed = oom;
        }
        if let Some(s) = stopper {
            let _ = s.await;
        }
        // Ended by the Job's own deadline (a runner that was away too long).
        if outcome.exit_code.is_none() && !stopped {
            if let Ok(Some(j)) = self.jobs().get_opt(job).await {
                outcome.timed_out =
                    failed_condition(&j).is_some_and(|why| why.starts_with("DeadlineExceeded"));
            }
        }
        outcome.phases.wait = us_since(waiting);
        Ok(outcome)
    }

    /// Delete Job `job` in the background: its pod gets SIGTERM, the grace period, SIGKILL.
    pub(super) fn stopper(&self, job: &str) -> tokio::task::JoinHandle<()> {
        tracing::info!(job, "stopping the handler: deleting its Job");
        let this = self.clone();
        let job = job.to_string();
        tokio::spawn(async move { this.delete_job(&job).await })
    }
}

/// Why a run whose pod someone else deleted has no result. The Job goes at once: Kubernetes
/// 1.20's Job controller starts a new pod for one being deleted, and the handler must not run
/// twice.
fn lost(pod: &str) -> String {
    tracing::warn!(
        pod,
        "the handler's pod is being deleted by someone else; deleting its Job"
    );
    "the handler's pod was deleted by someone else while it ran (its Job was deleted so that it does not run again)".into()
}

/// Seconds back from now to a time in Unix nanoseconds, rounded up and one more.
fn since_seconds(ns: i128) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    i64::try_from((now - ns).max(0) / 1_000_000_000 + 2).unwrap_or(i64::MAX)
}
