//! Stopping without losing work: the first SIGTERM (or Ctrl-C) drains — no new request
//! starts, running handlers go on until the drain timeout — and then cancels: their
//! containers are stopped (SIGTERM, grace, SIGKILL) and recorded as `cancelled`. A second
//! signal cancels at once. Either way every recorded result is pushed before the runner exits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How far a shutdown has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Work as usual.
    Run,
    /// Start nothing new; let running handlers finish.
    Drain,
    /// Stop running handlers now.
    Cancel,
}

/// A shared shutdown switch; clones see the same stage.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Stage>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(Stage::Run).0),
        }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shutdown({:?})", self.stage())
    }
}

impl Shutdown {
    /// The current stage.
    pub fn stage(&self) -> Stage {
        *self.tx.borrow()
    }

    /// Move to `stage`, never back.
    pub fn advance(&self, stage: Stage) {
        self.tx.send_if_modified(|s| {
            let moved = stage > *s;
            if moved {
                *s = stage;
            }
            moved
        });
    }

    /// Wait until the stage is at least `stage`.
    pub async fn reached(&self, stage: Stage) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s >= stage).await;
    }

    /// Drive the stages from SIGTERM and SIGINT: the first signal drains and cancels after
    /// `drain_timeout`; a second one cancels at once.
    pub fn on_signals(&self, drain_timeout: Duration) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!(
                drain_timeout = %crate::contract::units::format_duration(drain_timeout),
                "stopping: no new requests start; running ones may finish (a second signal cancels them)"
            );
            me.advance(Stage::Drain);
            tokio::select! {
                _ = term.recv() => tracing::warn!("second signal: cancelling running requests"),
                _ = int.recv() => tracing::warn!("second signal: cancelling running requests"),
                _ = tokio::time::sleep(drain_timeout) => tracing::warn!("drain timeout: cancelling running requests"),
            }
            me.advance(Stage::Cancel);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_only_move_forward_and_waiters_wake() {
        let s = Shutdown::default();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.reached(Stage::Drain).await }
        });
        s.advance(Stage::Cancel);
        s.advance(Stage::Drain);
        assert_eq!(s.stage(), Stage::Cancel);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter woke")
            .expect("joined");
    }
}
