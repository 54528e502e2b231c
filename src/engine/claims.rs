//! Exactly one runner of a fleet runs each request: claims on the git remote (see
//! [`crate::git::claims`]), taken before a request runs, renewed while it runs, dropped once
//! its result is on the branch, and taken over when their holder stops renewing them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::commit::CommitId;
use crate::contract::repo_config::RepoConfig;
use crate::git::claims::{claim_ref, ClaimAsk, ClaimBody};
use crate::git::{Identity, Mirror, Refusal};
use crate::record::unix_ms;

use super::context::SharedMirror;

/// How a claim attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The request is ours to run (a first claim, or our own earlier process's).
    Won(CommitId),
    /// Another runner holds it and renews it.
    Lost(String),
    /// Its holder stopped renewing it; it is ours now, and the holder's attempt counts as
    /// interrupted.
    TakenOver {
        /// The claim commit now ours.
        oid: CommitId,
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
    pub mirror: SharedMirror,
    pub branch: String,
    /// This process, as its claims name it.
    pub me: Holder,
    pub identity: Identity,
    pub config: RepoConfig,
    /// Claims the sweep found whose requests the branch records: their deletion rides on the
    /// pass's next push.
    pub stale: Arc<Mutex<Vec<String>>>,
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

    /// Claim a resource's queue, `asks` in order, in one push, then look at a tip fetched
    /// after every win for those already recorded (the claim of a runner that has just
    /// published may already be gone): their claims are dropped again. What became of each
    /// ask, in order, and the claims now held, renewed until each request is done with them.
    ///
    /// A first claim refused (someone holds it) is judged as its holder's claim says; once
    /// one is lost to a live holder, the queue stops there, so the claims after it are not
    /// looked at (their requests wait for that holder) and those won are given up again when
    /// the queue closes. A failure gives up what was won.
    pub async fn take_queue(
        &self,
        asks: Vec<Ask>,
        done: impl Fn(&Mirror, CommitId, &str) -> bool + Send + 'static,
    ) -> anyhow::Result<(QueueClaims, Vec<Claimed>)> {
        let this = self.clone();
        let taken = self
            .mirror.remote(move |m| {
                let firsts: Vec<ClaimAsk> = asks
                    .iter()
                    .map(|a| ClaimAsk {
                        refname: claim_ref(&this.branch, &a.id),
                        seen: None,
                        body: this.body(a.attempt),
                    })
                    .collect();
                let pushed = m.push_claims(&firsts, &this.identity, &this.take_stale())?;
                let mut claimed = Vec::with_capacity(asks.len());
                let mut stopped = false;
                let mut settled = Ok(());
                for ((ask, first), outcome) in asks.iter().zip(&firsts).zip(pushed) {
                    let verdict = match outcome {
                        Ok(oid) => Claimed::Won(oid),
                        Err(_) if stopped || settled.is_err() => {
                            Claimed::Lost("the runner holding an earlier request of its resource".into())
                        }
                        Err(reason) => match this.settle(m, &first.refname, ask, reason) {
                            Ok(v) => v,
                            Err(e) => {
                                settled = Err(e);
                                Claimed::Lost(String::new())
                            }
                        },
                    };
                    stopped |= matches!(verdict, Claimed::Lost(_));
                    claimed.push(verdict);
                }
                let won: Vec<(String, CommitId)> = asks
                    .iter()
                    .zip(&claimed)
                    .filter_map(|(a, c)| c.won().map(|oid| (a.id.clone(), oid)))
                    .collect();
                let tip = settled.and_then(|()| m.fetch(&this.branch));
                let tip = match tip {
                    Ok(tip) => tip,
                    Err(e) => {
                        this.give_up_in(m, won);
                        return Err(e);
                    }
                };
                let recorded: Vec<String> = won
                    .iter()
                    .filter(|(id, _)| tip.is_some_and(|t| done(m, t, id)))
                    .map(|(id, _)| id.clone())
                    .collect();
                if !recorded.is_empty() {
                    let refs: Vec<String> =
                        recorded.iter().map(|id| claim_ref(&this.branch, id)).collect();
                    if let Err(e) = m.drop_claims(&refs) {
                        tracing::warn!(error = %format!("{e:#}"), "failed to drop claims; a later pass drops them");
                    }
                }
                let mut held = BTreeMap::new();
                for (ask, verdict) in asks.iter().zip(claimed.iter_mut()) {
                    let Some(oid) = verdict.won() else { continue };
                    if recorded.contains(&ask.id) {
                        *verdict = Claimed::Done;
                    } else {
                        held.insert(
                            ask.id.clone(),
                            Held {
                                oid,
                                attempt: ask.attempt,
                                running: false,
                                lost: false,
                            },
                        );
                    }
                }
                Ok((held, claimed))
            })
            .await?;
        let (held, claimed) = taken;
        Ok((QueueClaims::renewed(self.clone(), held), claimed))
    }

    /// What a refused first claim on `ask` means: its holder's claim, judged. A claim may
    /// vanish between a refused push and the look at it (its request was just recorded):
    /// look again, a few times.
    fn settle(
        &self,
        m: &Mirror,
        refname: &str,
        ask: &Ask,
        mut refused: Refusal,
    ) -> anyhow::Result<Claimed> {
        for _ in 0..3 {
            let Some(claim) = m.fetch_claim(&self.branch, &ask.id)? else {
                match m.push_claim(refname, None, &self.body(ask.attempt), &self.identity)? {
                    Ok(oid) => return Ok(Claimed::Won(oid)),
                    Err(reason) => refused = reason,
                }
                continue;
            };
            let Some(held) = claim.body else {
                return Ok(Claimed::Lost(format!(
                    "an unreadable claim ({})",
                    claim.commit
                )));
            };
            let age = Duration::from_millis(unix_ms().saturating_sub(held.renewed_ms));
            let verdict = judge(
                &held,
                &self.me,
                age,
                self.config.claim_timeout,
                crate::exec::is_runner_process,
            );
            let body = match verdict {
                Verdict::Held(holder) => return Ok(Claimed::Lost(holder)),
                Verdict::Stale => self.body(held.attempt),
                Verdict::Free | Verdict::Ours => self.body(ask.attempt),
            };
            return Ok(
                match m.push_claim(refname, Some(claim.commit), &body, &self.identity)? {
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

    /// [`Claims::give_up_in`], off the async threads.
    async fn give_up(&self, claims: Vec<(String, CommitId)>) {
        if claims.is_empty() {
            return;
        }
        let this = self.clone();
        let given = self
            .mirror
            .remote(move |m| {
                this.give_up_in(m, claims);
                Ok(())
            })
            .await;
        if let Err(e) = given {
            tracing::warn!(error = %format!("{e:#}"), "failed to give up claims; they time out instead");
        }
    }

    /// Give up `claims` (request id, claim commit) before their containers started, in one
    /// push: marked released, so the next runner takes them at once instead of waiting out
    /// the claim timeout. Only a fast-forward of the commit held: a claim taken over
    /// meanwhile stays its new holder's. Best effort; a failure leaves them to time out.
    fn give_up_in(&self, m: &Mirror, claims: impl IntoIterator<Item = (String, CommitId)>) {
        let (ids, asks): (Vec<String>, Vec<ClaimAsk>) = claims
            .into_iter()
            .map(|(id, oid)| {
                let ask = ClaimAsk {
                    refname: claim_ref(&self.branch, &id),
                    seen: Some(oid),
                    body: ClaimBody {
                        released: true,
                        ..self.body(0)
                    },
                };
                (id, ask)
            })
            .unzip();
        if asks.is_empty() {
            return;
        }
        match m.push_claims(&asks, &self.identity, &[]) {
            Ok(outcomes) => {
                for (id, outcome) in ids.iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => tracing::info!(
                            id,
                            "gave up the claim: another runner may take it at once"
                        ),
                        Err(reason) => {
                            tracing::debug!(id, reason = %reason, "the claim had moved on")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "failed to give up claims; they time out instead")
            }
        }
    }

    /// Drop the claims `refs` (their requests are recorded on the branch), in one push.
    /// Failures only leave claims behind, which a later pass's sweep finds.
    pub async fn drop_refs(&self, refs: Vec<String>) {
        if refs.is_empty() {
            return;
        }
        if let Err(e) = self.mirror.remote(move |m| m.drop_claims(&refs)).await {
            tracing::warn!(error = %format!("{e:#}"), "failed to drop claims; the next pass drops them");
        }
    }

    /// Find every claim whose request the tip records (left by a runner that died after
    /// publishing, or by a push that failed to drop it): their deletion rides on this pass's
    /// next push ([`Claims::take_stale`]).
    pub async fn sweep(&self, done: impl Fn(&Mirror, &str) -> bool + Send + 'static) {
        let branch = self.branch.clone();
        let swept = self
            .mirror
            .remote(move |m| {
                Ok(m.fetch_claims(&branch)?
                    .into_keys()
                    .filter(|id| done(m, id))
                    .map(|id| claim_ref(&branch, &id))
                    .collect::<Vec<String>>())
            })
            .await;
        match swept {
            Ok(stale) => {
                if !stale.is_empty() {
                    tracing::debug!(claims = stale.len(), "claims of recorded requests to drop");
                }
                if let Ok(mut s) = self.stale.lock() {
                    s.extend(stale);
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "failed to sweep claims"),
        }
    }

    /// The claims the sweep found that no push has carried yet (the caller's push does).
    pub fn take_stale(&self) -> Vec<String> {
        self.stale
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// One request of a queue to claim: its id and the attempt it would run.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub id: String,
    pub attempt: u32,
}

impl Claimed {
    /// The claim commit, when the claim is ours.
    fn won(&self) -> Option<CommitId> {
        match self {
            Claimed::Won(oid) | Claimed::TakenOver { oid, .. } => Some(*oid),
            Claimed::Lost(_) | Claimed::Done => None,
        }
    }
}

/// A claim of a queue this runner holds.
#[derive(Debug, Clone)]
struct Held {
    /// The claim commit last pushed.
    oid: CommitId,
    attempt: u32,
    /// Its request's handler runs.
    running: bool,
    /// A renewal was refused: another runner took it over.
    lost: bool,
}

/// The claims of one resource's queue held by this runner: renewed together, every third
/// of the claim timeout, while any is held (a request waiting for its turn keeps its claim
/// as one that runs does), and given up together when the queue closes before running them.
pub(crate) struct QueueClaims {
    claims: Claims,
    held: Arc<tokio::sync::Mutex<BTreeMap<String, Held>>>,
    stop: Arc<tokio::sync::Notify>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl QueueClaims {
    fn renewed(claims: Claims, held: BTreeMap<String, Held>) -> Self {
        let held = Arc::new(tokio::sync::Mutex::new(held));
        let stop = Arc::new(tokio::sync::Notify::new());
        let every = claims.config.claim_timeout / 3;
        let (this, map, stopped) = (claims.clone(), held.clone(), stop.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.notified() => return,
                }
                let mut held = map.lock().await;
                let live: Vec<(String, Held)> = held
                    .iter()
                    .filter(|(_, h)| !h.lost)
                    .map(|(id, h)| (id.clone(), h.clone()))
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let asks: Vec<ClaimAsk> = live
                    .iter()
                    .map(|(id, h)| ClaimAsk {
                        refname: claim_ref(&this.branch, id),
                        seen: Some(h.oid),
                        body: this.body(h.attempt),
                    })
                    .collect();
                let who = this.identity.clone();
                let renewed = this
                    .mirror
                    .remote(move |m| m.push_claims(&asks, &who, &[]))
                    .await;
                let outcomes = match renewed {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "failed to renew claims; trying again");
                        continue;
                    }
                };
                for ((id, _), outcome) in live.iter().zip(outcomes) {
                    let Some(h) = held.get_mut(id) else { continue };
                    match outcome {
                        Ok(oid) => h.oid = oid,
                        Err(_) if h.running => {
                            h.lost = true;
                            tracing::error!(id = %id, "the claim was taken over while the handler ran: another runner treats this attempt as interrupted");
                        }
                        Err(_) => {
                            h.lost = true;
                            tracing::warn!(id = %id, "the claim was taken over while the request waited for its turn: it is left to that runner");
                        }
                    }
                }
            }
        });
        QueueClaims {
            claims,
            held,
            stop,
            renewer: Some(renewer),
        }
    }

    /// `id`'s turn has come: whether its claim is still this runner's (`false` when another
    /// runner took it over while it waited).
    pub async fn start(&self, id: &str) -> bool {
        let mut held = self.held.lock().await;
        let Some(h) = held.get_mut(id) else {
            return false;
        };
        if h.lost {
            held.remove(id);
            return false;
        }
        h.running = true;
        true
    }

    /// `id` is done with its claim: no longer renewed, and given up when `give_up` (its
    /// request stopped before its container started). Otherwise the claim stays, for its
    /// result's push (which drops it) or for the journal of an attempt that started.
    pub async fn leave(&self, id: &str, give_up: bool) {
        let mut held = self.held.lock().await;
        let Some(h) = held.remove(id) else { return };
        if give_up && !h.lost {
            self.claims.give_up(vec![(id.to_string(), h.oid)]).await;
        }
    }

    /// The queue is over: renewals stop, and the claims of requests it did not reach are
    /// given up, in one push.
    pub async fn close(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.renewer.take() {
            let _ = task.await;
        }
        let left: Vec<(String, CommitId)> = {
            let mut held = self.held.lock().await;
            std::mem::take(&mut *held)
                .into_iter()
                .filter(|(_, h)| !h.lost)
                .map(|(id, h)| (id, h.oid))
                .collect()
        };
        self.claims.give_up(left).await;
    }
}

impl Drop for QueueClaims {
    /// A queue that ended without [`QueueClaims::close`] (its task panicked) stops renewing:
    /// its claims time out instead of being held forever.
    fn drop(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
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
