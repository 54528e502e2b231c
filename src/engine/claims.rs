//! Exactly one runner of a fleet runs each request: claims on the git remote (see
//! [`crate::git::claims`]), taken before a request runs, renewed while it runs, dropped once
//! its result is on the branch, and taken over when their holder stops renewing them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::contract::repo_config::RepoConfig;
use crate::forge::GitHub;
use crate::git::claims::{claim_ref, ClaimBody};
use crate::git::{Identity, Mirror, Oid};
use crate::record::unix_ms;

/// How a claim attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The request is ours to run (a first claim, or our own earlier process's).
    Won(Oid),
    /// Another runner holds it and renews it.
    Lost(String),
    /// Its holder stopped renewing it; it is ours now, and the holder's attempt counts as
    /// interrupted.
    TakenOver {
        /// The claim commit now ours.
        oid: Oid,
        /// Who held it, and which attempt.
        previous: ClaimBody,
    },
    /// The request is already recorded on the branch.
    Done,
}

/// This runner's claims on one repository and branch.
#[derive(Clone)]
pub(crate) struct Claims {
    pub mirror: Arc<Mutex<Mirror>>,
    pub branch: String,
    pub runner: String,
    pub host: String,
    pub identity: Identity,
    pub config: RepoConfig,
    pub auth: Option<GitHub>,
}

impl Claims {
    fn body(&self, attempt: u32) -> ClaimBody {
        ClaimBody {
            runner: self.runner.clone(),
            host: self.host.clone(),
            attempt,
            renewed_ms: unix_ms(),
            nonce: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            ),
        }
    }

    /// Run `f` on the mirror, off the async threads, with a fresh token.
    async fn with_mirror<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mirror) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let token = super::git_token(self.auth.as_ref())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mirror = self.mirror.clone();
        let has_auth = self.auth.is_some();
        tokio::task::spawn_blocking(move || {
            let mut m = mirror
                .lock()
                .map_err(|_| anyhow::anyhow!("mirror lock poisoned"))?;
            if has_auth {
                m.set_token(token);
            }
            f(&m)
        })
        .await
        .context("failed to join a git task")?
    }

    /// Claim request `id`, whose attempt would be `attempt`. `done` says whether the branch
    /// tip records it: asked after every claim won, since the claim of a runner that has
    /// just published may already be gone.
    pub async fn acquire(
        &self,
        id: &str,
        attempt: u32,
        done: impl Fn(&Mirror, Oid) -> bool + Send + Clone + 'static,
    ) -> anyhow::Result<Claimed> {
        let refname = claim_ref(&self.branch, id);
        let timeout = self.config.claim_timeout;
        let claimed = {
            let (this, refname, id) = (self.clone(), refname.clone(), id.to_string());
            self.with_mirror(move |m| this.try_claim(m, &refname, &id, attempt, timeout))
                .await?
        };
        let oid = match &claimed {
            Claimed::Won(oid) | Claimed::TakenOver { oid, .. } => *oid,
            Claimed::Lost(_) | Claimed::Done => return Ok(claimed),
        };
        let branch = self.branch.clone();
        let finished = self
            .with_mirror(move |m| {
                let tip = m.fetch(&branch)?;
                Ok(tip.is_some_and(|t| done(m, t)))
            })
            .await?;
        if finished {
            self.release(vec![id.to_string()]).await;
            return Ok(Claimed::Done);
        }
        tracing::debug!(id, claim = %oid, "claimed");
        Ok(claimed)
    }

    fn try_claim(
        &self,
        m: &Mirror,
        refname: &str,
        id: &str,
        attempt: u32,
        timeout: Duration,
    ) -> anyhow::Result<Claimed> {
        // A claim may vanish between a refused push and the look at it (its request was
        // just recorded): look again, a few times.
        let mut refused = String::new();
        for _ in 0..3 {
            match m.push_claim(refname, None, &self.body(attempt), &self.identity)? {
                Ok(oid) => return Ok(Claimed::Won(oid)),
                Err(reason) => refused = reason,
            }
            let Some(claim) = m.fetch_claims(&self.branch)?.remove(id) else {
                continue;
            };
            let Some(held) = claim.body else {
                return Ok(Claimed::Lost(format!(
                    "an unreadable claim ({})",
                    claim.oid
                )));
            };
            let ours = held.runner == self.runner && held.host == self.host;
            let age = Duration::from_millis(unix_ms().saturating_sub(held.renewed_ms));
            if !ours && age < timeout {
                return Ok(Claimed::Lost(format!(
                    "runner `{}` on {} (renewed {}s ago)",
                    held.runner,
                    held.host,
                    age.as_secs()
                )));
            }
            let body = self.body(if ours { attempt } else { held.attempt });
            return Ok(
                match m.push_claim(refname, Some(claim.oid), &body, &self.identity)? {
                    Ok(oid) if ours => Claimed::Won(oid),
                    Ok(oid) => Claimed::TakenOver {
                        oid,
                        previous: held,
                    },
                    Err(_) => Claimed::Lost("another runner, just now".into()),
                },
            );
        }
        // Refused while no claim exists: the remote says no to claims (a hook, branch or ref
        // protection, read-only credentials). Nothing runs without one.
        anyhow::bail!("the remote refused the claim {refname}: {refused}")
    }

    /// Renew the claim on `id` every third of the claim timeout until the task is aborted.
    pub fn keep_alive(&self, id: &str, mut oid: Oid, attempt: u32) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let id = id.to_string();
        let every = self.config.claim_timeout / 3;
        tokio::spawn(async move {
            let refname = claim_ref(&this.branch, &id);
            loop {
                tokio::time::sleep(every).await;
                let (t, r) = (this.clone(), refname.clone());
                let body = this.body(attempt);
                let renewed = this
                    .with_mirror(move |m| m.push_claim(&r, Some(oid), &body, &t.identity))
                    .await;
                match renewed {
                    Ok(Ok(next)) => oid = next,
                    Ok(Err(_)) => {
                        tracing::error!(id = %id, "the claim was taken over while the handler ran: another runner treats this attempt as interrupted");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(id = %id, error = %format!("{e:#}"), "failed to renew the claim; trying again")
                    }
                }
            }
        })
    }

    /// Drop the claims on `ids`: their results are on the branch. Failures only leave
    /// claims behind, which the next pass drops.
    pub async fn release(&self, ids: Vec<String>) {
        let refs: Vec<String> = ids.iter().map(|id| claim_ref(&self.branch, id)).collect();
        if let Err(e) = self.with_mirror(move |m| m.drop_claims(&refs)).await {
            tracing::warn!(error = %format!("{e:#}"), "failed to drop claims; the next pass drops them");
        }
    }

    /// Drop every claim whose request the tip records (left by a runner that died after
    /// publishing).
    pub async fn sweep(&self, done: impl Fn(&Mirror, &str) -> bool + Send + 'static) {
        let branch = self.branch.clone();
        let swept = self
            .with_mirror(move |m| {
                let stale: Vec<String> = m
                    .fetch_claims(&branch)?
                    .into_keys()
                    .filter(|id| done(m, id))
                    .map(|id| claim_ref(&branch, &id))
                    .collect();
                m.drop_claims(&stale)?;
                Ok(stale.len())
            })
            .await;
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(claims = n, "dropped the claims of recorded requests"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "failed to sweep claims"),
        }
    }
}
