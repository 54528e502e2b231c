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

/// What a claim on the remote means to this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its holder gave it up before starting anything: take it as a first claim.
    Free,
    /// This process holds it (an earlier pass), or a dead process of this runner that used
    /// the same state directory, whose journal says what it did: take it, the journal rules.
    Ours,
    /// Its holder is gone: a dead process of this runner using another state directory, or
    /// any runner that stopped renewing it. Take it over; the holder's attempt counts as
    /// interrupted.
    Stale,
    /// A live holder has it (named): leave it.
    Held(String),
}

/// Who is asking, as a claim names its holder.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub runner: String,
    pub host: String,
    pub boot: String,
    pub pid: u32,
    pub state: String,
}

/// Judge the claim `held`, `age` old, for `me`. Pure: `alive` says whether a pid of this
/// boot is a running codex-runner.
pub(crate) fn judge(
    held: &ClaimBody,
    me: &Holder,
    age: Duration,
    timeout: Duration,
    alive: impl Fn(u32) -> bool,
) -> Verdict {
    if held.released {
        return Verdict::Free;
    }
    if held.runner == me.runner && held.host == me.host {
        // Claims of runners from before claims named their process: as then, ours.
        if held.pid == 0 || (held.boot == me.boot && held.pid == me.pid) {
            return Verdict::Ours;
        }
        let sibling_alive = held.boot == me.boot && alive(held.pid);
        if !sibling_alive {
            return if held.state == me.state {
                Verdict::Ours
            } else {
                Verdict::Stale
            };
        }
    }
    if age >= timeout {
        return Verdict::Stale;
    }
    let who = if held.runner == me.runner && held.host == me.host {
        format!("process {} of this runner", held.pid)
    } else {
        format!("runner `{}` on {}", held.runner, held.host)
    };
    Verdict::Held(format!("{who} (renewed {}s ago)", age.as_secs()))
}

/// This runner's claims on one repository and branch.
#[derive(Clone)]
pub(crate) struct Claims {
    pub mirror: Arc<Mutex<Mirror>>,
    pub branch: String,
    /// This process, as its claims name it.
    pub me: Holder,
    pub identity: Identity,
    pub config: RepoConfig,
    pub auth: Option<GitHub>,
}

/// A claim being renewed while its request runs; [`Renewals::stop`] ends that and says which
/// claim commit is the last one pushed.
pub(crate) struct Renewals {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Oid>,
}

impl Renewals {
    /// Stop renewing (a renewal under way finishes first); the claim commit now held.
    pub async fn stop(self) -> Option<Oid> {
        self.stop.notify_one();
        self.task.await.ok()
    }
}

impl Claims {
    fn body(&self, attempt: u32) -> ClaimBody {
        ClaimBody {
            runner: self.me.runner.clone(),
            host: self.me.host.clone(),
            attempt,
            renewed_ms: unix_ms(),
            nonce: format!(
                "{}-{}",
                self.me.pid,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            ),
            boot: self.me.boot.clone(),
            pid: self.me.pid,
            state: self.me.state.clone(),
            released: false,
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
    /// tip records it: asked after every claim won, on a tip fetched after the win, since the
    /// claim of a runner that has just published may already be gone. A claim won but not
    /// kept (the request is done, or the look at the tip failed) is given up again.
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
            .await;
        match finished {
            Ok(true) => {
                self.release(vec![id.to_string()]).await;
                Ok(Claimed::Done)
            }
            Ok(false) => {
                tracing::debug!(id, claim = %oid, "claimed");
                Ok(claimed)
            }
            Err(e) => {
                self.give_up(id, oid).await;
                Err(e)
            }
        }
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
            let Some(claim) = m.fetch_claim(&self.branch, id)? else {
                continue;
            };
            let Some(held) = claim.body else {
                return Ok(Claimed::Lost(format!(
                    "an unreadable claim ({})",
                    claim.oid
                )));
            };
            let age = Duration::from_millis(unix_ms().saturating_sub(held.renewed_ms));
            let verdict = judge(
                &held,
                &self.me,
                age,
                timeout,
                crate::exec::is_runner_process,
            );
            let body = match verdict {
                Verdict::Held(holder) => return Ok(Claimed::Lost(holder)),
                Verdict::Stale => self.body(held.attempt),
                Verdict::Free | Verdict::Ours => self.body(attempt),
            };
            return Ok(
                match m.push_claim(refname, Some(claim.oid), &body, &self.identity)? {
                    Ok(oid) if verdict == Verdict::Stale => Claimed::TakenOver {
                        oid,
                        previous: held,
                    },
                    Ok(oid) => Claimed::Won(oid),
                    Err(_) => Claimed::Lost("another runner, just now".into()),
                },
            );
        }
        // Refused while no claim exists: the remote says no to claims (a hook, branch or ref
        // protection, read-only credentials). Nothing runs without one.
        anyhow::bail!("the remote refused the claim {refname}: {refused}")
    }

    /// Renew the claim on `id` every third of the claim timeout until stopped.
    pub fn keep_alive(&self, id: &str, mut oid: Oid, attempt: u32) -> Renewals {
        let this = self.clone();
        let id = id.to_string();
        let every = self.config.claim_timeout / 3;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let refname = claim_ref(&this.branch, &id);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.notified() => return oid,
                }
                let (t, r) = (this.clone(), refname.clone());
                let body = this.body(attempt);
                let renewed = this
                    .with_mirror(move |m| m.push_claim(&r, Some(oid), &body, &t.identity))
                    .await;
                match renewed {
                    Ok(Ok(next)) => oid = next,
                    Ok(Err(_)) => {
                        tracing::error!(id = %id, "the claim was taken over while the handler ran: another runner treats this attempt as interrupted");
                        stopped.notified().await;
                        return oid;
                    }
                    Err(e) => {
                        tracing::warn!(id = %id, error = %format!("{e:#}"), "failed to renew the claim; trying again")
                    }
                }
            }
        });
        Renewals { stop, task }
    }

    /// Give up the claim on `id` (claim commit `oid`) before its container started: marked
    /// released, so the next runner takes it at once instead of waiting out the claim
    /// timeout. Only a fast-forward of `oid`: a claim taken over meanwhile stays its new
    /// holder's. Best effort; a failure leaves the claim to time out.
    pub async fn give_up(&self, id: &str, oid: Oid) {
        let refname = claim_ref(&self.branch, id);
        let body = ClaimBody {
            released: true,
            ..self.body(0)
        };
        let who = self.identity.clone();
        let given = self
            .with_mirror(move |m| m.push_claim(&refname, Some(oid), &body, &who))
            .await;
        match given {
            Ok(Ok(_)) => {
                tracing::info!(id, "gave up the claim: another runner may take it at once")
            }
            Ok(Err(reason)) => tracing::debug!(id, reason = %reason, "the claim had moved on"),
            Err(e) => {
                tracing::warn!(id, error = %format!("{e:#}"), "failed to give up the claim; it times out instead")
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Holder {
        Holder {
            runner: "r".into(),
            host: "h".into(),
            boot: "boot-1".into(),
            pid: 100,
            state: "s1".into(),
        }
    }

    fn held(runner: &str, boot: &str, pid: u32, state: &str) -> ClaimBody {
        ClaimBody {
            runner: runner.into(),
            host: "h".into(),
            attempt: 1,
            boot: boot.into(),
            pid,
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_claim_is_judged_by_who_holds_it_and_whether_they_live() {
        let fresh = Duration::from_secs(1);
        let old = Duration::from_secs(700);
        let timeout = Duration::from_secs(600);
        let alive = |pid: u32| pid == 200;
        let released = ClaimBody {
            released: true,
            ..held("other", "boot-1", 200, "s9")
        };
        let cases: [(&str, ClaimBody, Duration, Verdict); 9] = [
            ("released by anyone", released, fresh, Verdict::Free),
            (
                "this very process",
                held("r", "boot-1", 100, "s1"),
                fresh,
                Verdict::Ours,
            ),
            (
                "a dead process, same state dir: the journal rules",
                held("r", "boot-1", 300, "s1"),
                fresh,
                Verdict::Ours,
            ),
            (
                "a process of an earlier boot, same state dir",
                held("r", "boot-0", 200, "s1"),
                fresh,
                Verdict::Ours,
            ),
            (
                "a dead process with another state dir: interrupted",
                held("r", "boot-1", 300, "s2"),
                fresh,
                Verdict::Stale,
            ),
            (
                "a live sibling of the same name",
                held("r", "boot-1", 200, "s2"),
                fresh,
                Verdict::Held("process 200 of this runner (renewed 1s ago)".into()),
            ),
            (
                "another runner, renewing",
                held("other", "boot-7", 5, "s7"),
                fresh,
                Verdict::Held("runner `other` on h (renewed 1s ago)".into()),
            ),
            (
                "another runner, silent past the timeout",
                held("other", "boot-7", 5, "s7"),
                old,
                Verdict::Stale,
            ),
            (
                "an older runner's claim of this name",
                held("r", "", 0, ""),
                fresh,
                Verdict::Ours,
            ),
        ];
        for (what, body, age, want) in cases {
            assert_eq!(judge(&body, &me(), age, timeout, alive), want, "{what}");
        }
    }
}
