//! What earlier runner processes left on this host: attempts to go on with (the journal's
//! decision, given what the executor says became of each container), and containers no live
//! process owns.

use std::collections::BTreeMap;

use crate::contract::repo_config::RepoConfig;
use crate::plan::{self, Action};

use super::context::Connection;
use super::journal;
use super::report::{DispatchError, DispatchOptions};
use super::survey::Leftover;

/// Stop and remove the containers a dead process of this runner left on this host. Docker
/// being away is not this pass's problem unless it has requests to run.
pub(super) async fn reap_orphans(opts: &DispatchOptions, executor: &Connection, keep: &[String]) {
    let reaped = async {
        let docker = executor.get().await?;
        let reaped = docker
            .reap_orphans(&opts.runner, opts.limits.grace, keep)
            .await?;
        // Secret files a dead process staged go once their container is gone.
        let live = docker.managed_containers(Some(&opts.runner)).await?;
        crate::secrets::sweep(
            opts.secrets.dir(),
            &crate::exec::spec::container_prefix(&opts.runner),
            &live,
            crate::exec::is_runner_process,
        );
        anyhow::Ok(reaped)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(60), reaped).await {
        Ok(Ok(names)) if !names.is_empty() => {
            tracing::warn!(containers = ?names, "removed containers left by a dead runner")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %format!("{e:#}"), "no clean-up of leftovers: Docker did not answer")
        }
        Err(_) => tracing::warn!("no clean-up of leftovers: Docker took over a minute"),
    }
}

/// What the journal says to do with the attempts dead processes left.
#[derive(Default)]
pub(super) struct Recovered {
    /// How each request goes on.
    pub(super) plans: BTreeMap<String, journal::Recovery>,
    /// Requests whose container a live sibling process owns: not this pass's.
    pub(super) busy: Vec<String>,
    /// Containers to follow, which the leftover clean-up must not touch.
    pub(super) followed: Vec<String>,
    /// Processes whose checkouts those containers have mounted.
    pub(super) mounted: Vec<u32>,
}

/// Ask the engine what became of each leftover attempt and decide how it goes on.
pub(super) async fn recover(
    leftovers: Vec<Leftover>,
    planned: &plan::Plan,
    config: &RepoConfig,
    executor: &Connection,
) -> Result<Recovered, DispatchError> {
    let mut out = Recovered::default();
    if leftovers.is_empty() {
        return Ok(out);
    }
    let docker = executor.get().await.map_err(|e| {
        DispatchError::Docker(e.context(format!(
            "{} request(s) have an unfinished attempt whose container must be looked at first",
            leftovers.len()
        )))
    })?;
    let boot = crate::exec::boot_id();
    for left in leftovers {
        let fate = docker
            .fate(&left.record.container)
            .await
            .map_err(DispatchError::Docker)?;
        let wanted = planned
            .items
            .iter()
            .any(|i| i.log_id == left.id && matches!(i.action, Action::Run(_)));
        let plan = journal::decide(
            &left.record,
            &fate,
            // A run that outlives its runner's host is followed whichever boot started it.
            (!docker.outlives_host()).then_some(boot.as_str()),
            crate::exec::owner_is_alive,
            config,
        );
        if !wanted {
            // Recorded on the branch since (by another runner), or gone from the inbox.
            if plan != journal::Recovery::Busy {
                tracing::warn!(id = %left.id, container = %left.record.container, "dropping an unfinished attempt whose request is no longer pending");
                docker.remove(&left.record.container).await;
                let _ = std::fs::remove_dir_all(&left.dir);
            }
            continue;
        }
        tracing::warn!(id = %left.id, attempt = left.record.attempt, fate = ?fate, plan = ?plan, "an earlier runner process left this attempt unfinished");
        match &plan {
            journal::Recovery::Busy => {
                out.busy.push(left.id);
                continue;
            }
            journal::Recovery::Follow(rec) => {
                out.followed.push(rec.container.clone());
                if let crate::exec::Fate::Running { owner: Some(o) }
                | crate::exec::Fate::Exited { owner: Some(o), .. } = &fate
                {
                    if let Some(pid) = o.split_once('/').and_then(|(_, p)| p.parse().ok()) {
                        out.mounted.push(pid);
                    }
                }
            }
            _ => {}
        }
        out.plans.insert(left.id, plan);
    }
    Ok(out)
}
