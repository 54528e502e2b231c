//! How a pod's handler ended, watched from the moment it runs: the kubelet writes the
//! container's terminated state a moment before a deleted pod disappears, so a runner that
//! only asked after stopping it could miss the exit code. A watch sees every change.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};
use tokio::sync::watch;

use super::handler_status;

/// What the watch saw last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ended {
    /// Still running (or not seen yet).
    #[default]
    Running,
    /// The handler exited: its code, and whether the OOM killer ended it.
    Exited { code: i64, oom: bool },
    /// The pod went without a terminated state being seen.
    Gone,
}

/// Watches one pod until its handler ends or it is gone; dropped with its task.
pub struct Ending {
    rx: watch::Receiver<Ended>,
    task: tokio::task::JoinHandle<()>,
    /// The pod was seen being deleted.
    deleted_rx: watch::Receiver<bool>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ended(pod: &Pod) -> Option<Ended> {
    let t = handler_status(pod)?.state.as_ref()?.terminated.as_ref()?;
    Some(Ended::Exited {
        code: i64::from(t.exit_code),
        oom: t.reason.as_deref() == Some("OOMKilled"),
    })
}

impl Ending {
    /// Start watching pod `name`.
    pub fn watch(pods: Api<Pod>, name: &str) -> Ending {
        let (tx, rx) = watch::channel(Ended::Running);
        let name = name.to_string();
        let (deleted_tx, deleted_rx) = watch::channel(false);
        let marked = move |p: &Pod| {
            if p.metadata.deletion_timestamp.is_some() {
                let _ = deleted_tx.send(true);
            }
        };
        let task = tokio::spawn(async move {
            loop {
                // Where the watch starts: the pod as it is now.
                let pod = match pods.get_opt(&name).await {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        let _ = tx.send(Ended::Gone);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "failed to read the pod; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                marked(&pod);
                if let Some(e) = ended(&pod) {
                    let _ = tx.send(e);
                    return;
                }
                let version = pod.metadata.resource_version.clone().unwrap_or_default();
                let wp = WatchParams::default()
                    .fields(&format!("metadata.name={name}"))
                    .timeout(240);
                let stream = match pods.watch(&wp, &version).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "failed to watch the pod; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                tokio::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                            marked(&p);
                            if let Some(e) = ended(&p) {
                                let _ = tx.send(e);
                                return;
                            }
                        }
                        Ok(WatchEvent::Deleted(p)) => {
                            marked(&p);
                            let _ = tx.send(ended(&p).unwrap_or(Ended::Gone));
                            return;
                        }
                        Ok(WatchEvent::Bookmark(_)) => {}
                        // Expired or broken: start over from the pod as it is.
                        Ok(WatchEvent::Error(_)) | Err(_) => break,
                    }
                }
            }
        });
        Ending {
            rx,
            task,
            deleted_rx,
        }
    }

    /// Whether the pod was seen being deleted (or is gone).
    pub fn deleting(&self) -> bool {
        *self.deleted_rx.borrow() || self.now() == Ended::Gone
    }

    /// Completes when the pod is seen being deleted; never, if it is not.
    pub async fn deleted(&mut self) {
        if self.deleted_rx.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// What was seen so far.
    pub fn now(&self) -> Ended {
        self.rx.borrow().clone()
    }

    /// How the handler ended, waiting at most `patience` for it; `Running` if it did not.
    pub async fn wait(&mut self, patience: Duration) -> Ended {
        let seen = tokio::time::timeout(patience, async {
            self.rx
                .wait_for(|e| *e != Ended::Running)
                .await
                .map(|e| e.clone())
        })
        .await;
        match seen {
            Ok(Ok(e)) => e,
            _ => self.now(),
        }
    }
}
