//! Publishing results: a commit built on the remote's tip and pushed without force; a refused
//! push fetches, rebuilds the same changes on the new tip and tries again with back-off, so a
//! foreign commit is never lost.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use backon::BlockingRetryable;
use git2::build::TreeUpdateBuilder;
use git2::{ObjectType, Signature};

use git2::Oid;

use super::{id, oid, push, transport, CommitId, Identity, Mirror};

/// A change to make in the runner's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a file.
    Write {
        /// Repository path.
        path: String,
        /// Content.
        bytes: Vec<u8>,
    },
    /// Move a file (history kept: same blob, new path). Skipped if `from` is gone.
    Move {
        /// Current path.
        from: String,
        /// New path.
        to: String,
    },
}

/// The result of publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The commit now at the branch tip.
    pub commit: CommitId,
    /// How many times the push was rejected and the changes replayed.
    pub replays: u32,
    /// The tip it was built on.
    pub parent: CommitId,
}

/// A failed push that may succeed on a newer tip.
#[derive(Debug, thiserror::Error)]
#[error("push to {branch} was rejected: {reason}")]
pub struct PushRejected {
    branch: String,
    reason: super::push::Refusal,
}

impl Mirror {
    /// Commit `changes` on top of the remote `branch` and push, replaying on a moved tip.
    pub fn publish(
        &self,
        branch: &str,
        changes: &[Change],
        message: &str,
        who: &Identity,
        max_attempts: usize,
    ) -> anyhow::Result<Published> {
        self.publish_with(
            branch,
            |_, _| Ok(changes.to_vec()),
            message,
            who,
            max_attempts,
            &[],
        )
    }

    /// Like [`Mirror::publish`], with the changes made anew from each tip they are built on
    /// (`changes(mirror, tip)`): a replay over a commit that moved files (a layout migration)
    /// writes where the new tip says, and a migration replayed over new results moves them too.
    /// `riders` are refs deleted in the same push (see [`Mirror::push`]).
    pub fn publish_with(
        &self,
        branch: &str,
        mut changes: impl FnMut(&Mirror, CommitId) -> anyhow::Result<Vec<Change>>,
        message: &str,
        who: &Identity,
        max_attempts: usize,
        riders: &[String],
    ) -> anyhow::Result<Published> {
        let mut replays = 0u32;
        let attempt = || -> anyhow::Result<Published> {
            let tip = self.fetch(branch)?.with_context(|| {
                format!("branch {branch} does not exist on {}", self.shown_url())
            })?;
            let changes = changes(self, tip)?;
            let commit = self.build_commit(oid(tip), &changes, message, who)?;
            crate::crashpoint::hit("before-push");
            self.push(branch, commit, oid(tip), riders)?;
            Ok(Published {
                commit: id(commit),
                replays: 0,
                parent: tip,
            })
        };
        let result = attempt
            .retry(transport::backoff(max_attempts))
            .notify(|e: &anyhow::Error, wait: Duration| {
                if e.downcast_ref::<PushRejected>().is_some() {
                    replays += 1;
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "publish failed; will fetch and replay");
            })
            .call();
        result.map(|p| Published { replays, ..p })
    }

    pub(super) fn build_commit(
        &self,
        tip: Oid,
        changes: &[Change],
        message: &str,
        who: &Identity,
    ) -> anyhow::Result<Oid> {
        let parent = self.repo.find_commit(tip)?;
        let base = parent.tree()?;
        let mut update = TreeUpdateBuilder::new();
        for change in changes {
            match change {
                Change::Write { path, bytes } => {
                    let blob = self.repo.blob(bytes)?;
                    update.upsert(path.as_str(), blob, git2::FileMode::Blob);
                }
                Change::Move { from, to } => {
                    if let Ok(entry) = base.get_path(Path::new(from)) {
                        let mode = if entry.filemode() == 0o100755 {
                            git2::FileMode::BlobExecutable
                        } else {
                            git2::FileMode::Blob
                        };
                        if entry.kind() == Some(ObjectType::Blob) {
                            update.upsert(to.as_str(), entry.id(), mode);
                        }
                        update.remove(from.as_str());
                    }
                }
            }
        }
        let tree_id = update.create_updated(&self.repo, &base)?;
        let tree = self.repo.find_tree(tree_id)?;
        let sig =
            Signature::now(&who.name, &who.email).context("failed to make the commit signature")?;
        Ok(self
            .repo
            .commit(None, &sig, &sig, message, &tree, &[&parent])?)
    }

    /// Push `commit` over `tip`, deleting `riders` in the same push (claims whose results an
    /// earlier push recorded: safe to drop whether or not this one lands).
    pub(super) fn push(
        &self,
        branch: &str,
        commit: Oid,
        tip: Oid,
        riders: &[String],
    ) -> anyhow::Result<()> {
        let refname = format!("refs/heads/{branch}");
        // Only over the tip the commit was built on: a moved branch is replayed, never lost.
        let mut updates = vec![push::RefUpdate::swap(&refname, commit, Some(tip))];
        updates.extend(riders.iter().map(|r| push::RefUpdate::delete(r)));
        let mut outcomes = self.push_refs(&updates, true)?.into_iter();
        let landed = outcomes.next().unwrap_or(Ok(()));
        self.settle_deletions(riders, outcomes);
        if let Err(reason) = landed {
            return Err(PushRejected {
                branch: branch.into(),
                reason,
            }
            .into());
        }
        // Keep the mirror's view in step so the next pass starts from our commit.
        self.repo
            .reference(
                &format!("refs/remotes/origin/{branch}"),
                commit,
                true,
                "codex-runner push",
            )
            .context("failed to record the pushed tip")?;
        Ok(())
    }
}
