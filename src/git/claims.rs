//! Claims: which runner runs a request, kept on the git remote and nowhere else.
//!
//! A claim is the ref `refs/codex/claims/<branch>/<id>`, pointing at a commit whose message
//! says who holds it (JSON). Every change to it is a compare-and-swap done by the remote's
//! own ref update: a first claim is a root commit (the push fails if any claim exists, since
//! it is not a fast-forward of it); a renewal or a takeover is a child of the claim commit
//! the runner saw (the push fails if the claim moved since). Pushes are never forced.

use std::collections::BTreeMap;

use anyhow::Context;
use git2::Signature;
use serde::{Deserialize, Serialize};

use super::{id, oid, CommitId, Identity, Mirror, RefUpdate, Refusal};

/// Who holds a claim, as its commit message says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimBody {
    /// The runner's name.
    pub runner: String,
    /// The host it runs on.
    pub host: String,
    /// The attempt it runs (or ran).
    pub attempt: u32,
    /// When it last renewed the claim, in Unix milliseconds.
    pub renewed_ms: u64,
    /// Makes every claim commit unique, so two runners never push the same one.
    pub nonce: String,
    /// The boot of the host the holding process runs in (empty in claims of older runners).
    #[serde(default)]
    pub boot: String,
    /// The holding process (0 in claims of older runners).
    #[serde(default)]
    pub pid: u32,
    /// Which state directory journals the attempt: a runner sharing it reads the journal.
    #[serde(default)]
    pub state: String,
    /// The holder gave the request up before its container started: free for anyone.
    #[serde(default)]
    pub released: bool,
}

/// One claim to push: `refname` set to a new claim commit saying `body`, over `seen` (the
/// claim commit the pusher saw; `None` for a first claim).
#[derive(Debug, Clone)]
pub struct ClaimAsk {
    /// The claim's ref.
    pub refname: String,
    /// The claim commit it replaces.
    pub seen: Option<CommitId>,
    /// Who holds it now.
    pub body: ClaimBody,
}

/// A claim as the remote has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The claim commit.
    pub commit: CommitId,
    /// Its holder; `None` when the commit is not a claim this runner can read.
    pub body: Option<ClaimBody>,
}

/// The ref of request `id`'s claim on `branch`.
pub fn claim_ref(branch: &str, id: &str) -> String {
    format!("refs/codex/claims/{branch}/{id}")
}

impl Mirror {
    /// The claims on `branch` the remote has now, by request id (one fetch; claims deleted
    /// upstream are pruned here too).
    pub fn fetch_claims(&self, branch: &str) -> anyhow::Result<BTreeMap<String, Claim>> {
        let prefix = format!("refs/codex/claims/{branch}/");
        let spec = format!("+{prefix}*:{prefix}*");
        self.fetch_with(&spec, "the claims", true)?;
        let mut out = BTreeMap::new();
        for r in self.repo.references_glob(&format!("{prefix}*"))? {
            let r = r?;
            let (Ok(name), Some(target)) = (r.name(), r.target()) else {
                continue;
            };
            let request = name.trim_start_matches(&prefix).to_string();
            out.insert(request, self.read_claim(target));
        }
        Ok(out)
    }

    /// The claim on request `id` the remote has now, fetched alone (by its exact name, so
    /// other claims coming and going meanwhile do not matter).
    pub fn fetch_claim(&self, branch: &str, id: &str) -> anyhow::Result<Option<Claim>> {
        let refname = claim_ref(branch, id);
        let fetched = self.fetch_spec(&format!("+{refname}:{refname}"), "a claim")?;
        if !fetched.has(&refname) {
            if let Ok(mut local) = self.repo.find_reference(&refname) {
                let _ = local.delete();
            }
            return Ok(None);
        }
        let Ok(oid) = self.repo.refname_to_id(&refname) else {
            return Ok(None);
        };
        Ok(Some(self.read_claim(oid)))
    }

    fn read_claim(&self, commit: git2::Oid) -> Claim {
        let body = self
            .repo
            .find_commit(commit)
            .ok()
            .and_then(|c| serde_json::from_slice(c.message_bytes()).ok());
        Claim {
            commit: id(commit),
            body,
        }
    }

    /// Push a claim: the first one (`seen` is `None`) or one replacing the claim commit
    /// `seen`. `Ok(Ok(commit))` when the remote took it, `Ok(Err(reason))` when it refused
    /// (the claim was not what the caller saw, or a hook or a rule said no).
    pub fn push_claim(
        &self,
        refname: &str,
        seen: Option<CommitId>,
        body: &ClaimBody,
        who: &Identity,
    ) -> anyhow::Result<Result<CommitId, Refusal>> {
        let ask = ClaimAsk {
            refname: refname.to_string(),
            seen,
            body: body.clone(),
        };
        let mut out = self.push_claims(&[ask], who, &[])?;
        out.pop().context("a push of one claim said nothing of it")
    }

    /// Push several claims in one round trip, each on its own terms (see
    /// [`Mirror::push_claim`]), deleting `riders` (claims whose requests the branch records)
    /// in the same push; what became of each claim, in order.
    pub fn push_claims(
        &self,
        asks: &[ClaimAsk],
        who: &Identity,
        riders: &[String],
    ) -> anyhow::Result<Vec<Result<CommitId, Refusal>>> {
        let tree = self.repo.treebuilder(None)?.write()?;
        let tree = self.repo.find_tree(tree)?;
        let sig =
            Signature::now(&who.name, &who.email).context("failed to make the claim signature")?;
        let mut commits = Vec::with_capacity(asks.len());
        let mut updates = Vec::with_capacity(asks.len());
        for ask in asks {
            let message = serde_json::to_string(&ask.body)?;
            let seen = ask.seen.map(oid);
            let parent = seen.map(|p| self.repo.find_commit(p)).transpose()?;
            let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
            let commit = self
                .repo
                .commit(None, &sig, &sig, &message, &tree, &parents)?;
            commits.push(commit);
            updates.push(RefUpdate::swap(&ask.refname, commit, seen));
        }
        updates.extend(riders.iter().map(|r| RefUpdate::delete(r)));
        let mut outcomes = self.push_refs(&updates, false)?;
        let dropped = outcomes.split_off(asks.len().min(outcomes.len()));
        self.settle_deletions(riders, dropped);
        let mut out = Vec::with_capacity(asks.len());
        for ((ask, commit), outcome) in asks.iter().zip(commits).zip(outcomes) {
            match outcome {
                Ok(()) => {
                    self.repo
                        .reference(&ask.refname, commit, true, "codex-runner claim")
                        .context("failed to record the claim")?;
                    out.push(Ok(id(commit)));
                }
                Err(reason) => {
                    tracing::debug!(claim = %ask.refname, reason = %reason, "claim refused");
                    out.push(Err(reason));
                }
            }
        }
        Ok(out)
    }

    /// Prove the credentials may push to the remote, leaving nothing behind: an empty root
    /// commit pushed to `refname` (which must not exist) and deleted again at once. `Ok(Err)`
    /// when the remote refused the push.
    pub fn probe_push(&self, refname: &str, who: &Identity) -> anyhow::Result<Result<(), Refusal>> {
        let tree = self.repo.treebuilder(None)?.write()?;
        let tree = self.repo.find_tree(tree)?;
        let sig = Signature::now(&who.name, &who.email)
            .context("failed to make the probe's signature")?;
        let commit = self.repo.commit(
            None,
            &sig,
            &sig,
            "codex-runner verify: may this runner push here?",
            &tree,
            &[],
        )?;
        let mut outcomes = self.push_refs(&[RefUpdate::swap(refname, commit, None)], false)?;
        let landed = outcomes.pop().unwrap_or(Ok(()));
        if landed.is_ok() {
            let gone = self.push_refs(&[RefUpdate::delete(refname)], false)?;
            if let Some(Err(reason)) = gone.into_iter().next() {
                tracing::warn!(refname, reason = %reason, "the push probe's ref stayed on the remote");
            }
        }
        Ok(landed)
    }

    /// Delete claims on the remote (their requests are recorded on the branch), in one push.
    pub fn drop_claims(&self, refnames: &[String]) -> anyhow::Result<()> {
        let updates: Vec<RefUpdate> = refnames.iter().map(|r| RefUpdate::delete(r)).collect();
        let outcomes = self.push_refs(&updates, false)?;
        self.settle_deletions(refnames, outcomes);
        Ok(())
    }

    /// After a push deleted `refnames` (`outcomes`, in order): forget those gone here too;
    /// a refusal only leaves a claim behind, which a later sweep drops.
    pub(super) fn settle_deletions(
        &self,
        refnames: &[String],
        outcomes: impl IntoIterator<Item = Result<(), Refusal>>,
    ) {
        for (r, outcome) in refnames.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    if let Ok(mut local) = self.repo.find_reference(r) {
                        let _ = local.delete();
                    }
                }
                Err(reason) => tracing::warn!(reason = %reason, "the remote kept a claim"),
            }
        }
    }
}
