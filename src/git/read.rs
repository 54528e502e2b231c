//! Reading the mirror without the network: files, directories and object ids at a commit, what
//! a commit or a pull request changed (a tree diff that skips equal subtrees), the commit that
//! brought each path to a branch, and a trial merge.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use git2::ObjectType;

use crate::contract::handlers::PathKind;
use crate::plan::EntryContent;

use git2::Oid;

use super::{id, oid, CommitId, Mirror, NeedsDeeper};

/// What merging a pull request's head into its base would give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialMerge {
    /// The merge commit (stored in the mirror, on no branch).
    Merged(CommitId),
    /// It cannot be made: these paths conflict.
    Conflicts(Vec<String>),
}

impl Mirror {
    /// The commit `rev` names (`main`, `origin/main`, `HEAD~1`, a commit id).
    pub fn resolve(&self, rev: &str) -> anyhow::Result<CommitId> {
        let commit = self
            .repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .with_context(|| format!("`{rev}` names no commit in this repository"))?;
        Ok(id(commit.id()))
    }

    /// Where `head` left `base` (their merge base). In a shallow mirror whose history does
    /// not reach it yet, fails with [`NeedsDeeper`] (`depth`: the first-parent commits this
    /// mirror holds below the deeper of the two). Found within a shallow history, it is where the two meet
    /// through the commits fetched, which for branches that did not merge each other is
    /// where they forked.
    pub fn fork_point(&self, base: CommitId, head: CommitId) -> anyhow::Result<CommitId> {
        let (base, head) = (oid(base), oid(head));
        match self.repo.merge_base(base, head) {
            Ok(fork) => Ok(id(fork)),
            Err(e) if e.code() == git2::ErrorCode::NotFound && !self.shallow_roots().is_empty() => {
                let walked = |from: Oid| -> anyhow::Result<usize> {
                    let mut walk = self.repo.revwalk()?;
                    walk.push(from)?;
                    walk.simplify_first_parent()?;
                    Ok(walk.count())
                };
                Err(NeedsDeeper {
                    depth: walked(base)?.max(walked(head)?),
                }
                .into())
            }
            Err(e) => Err(e).context("failed to find where the pull request forked"),
        }
    }

    /// Paths added, modified or removed on `head` since it left `base` (their merge base).
    pub fn changed_since_fork(
        &self,
        base: CommitId,
        head: CommitId,
    ) -> anyhow::Result<Vec<String>> {
        let (base, head) = (oid(base), oid(head));
        let fork = self
            .repo
            .merge_base(base, head)
            .context("failed to find where the pull request forked")?;
        let old = self.repo.find_commit(fork)?.tree()?;
        let new = self.repo.find_commit(head)?.tree()?;
        self.diff_paths(Some(&old), &new)
    }

    /// Every path `commit` adds, changes or removes against its first parent (nothing for a
    /// root commit: creating a repository is not a change to review).
    pub fn changed_by(&self, commit: CommitId) -> anyhow::Result<Vec<String>> {
        let c = self.repo.find_commit(oid(commit))?;
        let Ok(parent) = c.parent(0) else {
            return Ok(Vec::new());
        };
        self.diff_paths(Some(&parent.tree()?), &c.tree()?)
    }

    /// Paths of the files that differ between two trees (added, removed, changed in content
    /// or mode), sorted. Subtrees with the same id on both sides are not opened, so the cost
    /// follows the change, not the tree (libgit2's tree diff reads every subtree of both: at
    /// 10,000 finished requests, the whole outbox twice).
    pub(super) fn diff_paths(
        &self,
        old: Option<&git2::Tree>,
        new: &git2::Tree,
    ) -> anyhow::Result<Vec<String>> {
        let mut out = BTreeSet::new();
        self.diff_into(old, Some(new), "", &mut out)?;
        Ok(out.into_iter().collect())
    }

    pub(super) fn diff_into(
        &self,
        old: Option<&git2::Tree>,
        new: Option<&git2::Tree>,
        prefix: &str,
        out: &mut BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let entries = |t: Option<&git2::Tree>| -> BTreeMap<Vec<u8>, (Oid, i32)> {
            t.map(|t| {
                t.iter()
                    .map(|e| (e.name_bytes().to_vec(), (e.id(), e.filemode())))
                    .collect()
            })
            .unwrap_or_default()
        };
        let (before, after) = (entries(old), entries(new));
        let names: BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
        for name in names {
            let (was, is) = (before.get(name), after.get(name));
            if was == is {
                continue;
            }
            let path = format!("{prefix}{}", String::from_utf8_lossy(name));
            let dir = i32::from(git2::FileMode::Tree);
            let subtree = |side: Option<&(Oid, i32)>| -> anyhow::Result<Option<git2::Tree<'_>>> {
                match side {
                    Some((id, mode)) if *mode == dir => Ok(Some(self.repo.find_tree(*id)?)),
                    _ => Ok(None),
                }
            };
            let (old_dir, new_dir) = (subtree(was)?, subtree(is)?);
            if old_dir.is_some() || new_dir.is_some() {
                self.diff_into(old_dir.as_ref(), new_dir.as_ref(), &format!("{path}/"), out)?;
            }
            // A file on either side (beside a directory of the same name, when one replaced
            // the other).
            if was.is_some_and(|(_, m)| *m != dir) || is.is_some_and(|(_, m)| *m != dir) {
                out.insert(path);
            }
        }
        Ok(())
    }

    /// The bytes of the regular file at `path` in `commit`, if there is one.
    pub fn read_file(&self, commit: CommitId, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let tree = self.repo.find_commit(oid(commit))?.tree()?;
        let entry = match tree.get_path(Path::new(path)) {
            Ok(e) => e,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("failed to look up {path}")),
        };
        if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120000 {
            return Ok(None);
        }
        let blob = self.repo.find_blob(entry.id())?;
        Ok(Some(blob.content().to_vec()))
    }

    /// What `path` is in `commit`.
    pub fn path_kind(&self, commit: CommitId, path: &str) -> Option<PathKind> {
        let tree = self.repo.find_commit(oid(commit)).ok()?.tree().ok()?;
        let entry = tree.get_path(Path::new(path)).ok()?;
        Some(match entry.filemode() {
            0o100755 => PathKind::Executable,
            0o100644 => PathKind::File,
            0o120000 => PathKind::Symlink,
            _ => PathKind::Dir,
        })
    }

    /// A commit (stored, on no branch) of what merging `head` into `base` would give, as
    /// GitHub's `refs/pull/N/merge`, or the paths that conflict when it cannot be made.
    pub fn trial_merge(&self, base: CommitId, head: CommitId) -> anyhow::Result<TrialMerge> {
        let (b, h) = (
            self.repo.find_commit(oid(base))?,
            self.repo.find_commit(oid(head))?,
        );
        let mut index = self
            .repo
            .merge_commits(&b, &h, None)
            .context("failed to merge the pull request in memory")?;
        if index.has_conflicts() {
            let mut paths: Vec<String> = index
                .conflicts()?
                .flatten()
                .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .collect();
            paths.sort();
            paths.dedup();
            return Ok(TrialMerge::Conflicts(paths));
        }
        let tree = self.repo.find_tree(index.write_tree_to(&self.repo)?)?;
        let sig = git2::Signature::now("codex-runner", "codex-runner@localhost")?;
        let merged = self
            .repo
            .commit(None, &sig, &sig, "trial merge", &tree, &[&b, &h])
            .context("failed to store the trial merge")?;
        Ok(TrialMerge::Merged(id(merged)))
    }

    /// The object id (hex) of the tree or blob at `path` in `commit`.
    pub fn object_id(&self, commit: CommitId, path: &str) -> Option<String> {
        let tree = self.repo.find_commit(oid(commit)).ok()?.tree().ok()?;
        tree.get_path(Path::new(path))
            .ok()
            .map(|e| e.id().to_string())
    }

    /// The entries directly under `dir` (e.g. `requests/`) in `commit`, with blob contents.
    ///
    /// Blobs over `max_bytes` are returned with only their first `max_bytes + 1` bytes, enough
    /// for the size rule to reject them without holding them whole.
    pub fn list_dir(
        &self,
        commit: CommitId,
        dir: &str,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<(String, EntryContent, String)>> {
        let tree = self.repo.find_commit(oid(commit))?.tree()?;
        let sub = match tree.get_path(Path::new(dir.trim_end_matches('/'))) {
            Ok(e) if e.kind() == Some(ObjectType::Tree) => self.repo.find_tree(e.id())?,
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("failed to read the inbox"),
        };
        let mut out = Vec::new();
        for entry in sub.iter() {
            let Ok(name) = entry.name() else { continue };
            let path = format!("{}/{name}", dir.trim_end_matches('/'));
            let content = match (entry.kind(), entry.filemode()) {
                (Some(ObjectType::Blob), 0o120000) => EntryContent::Symlink,
                (Some(ObjectType::Blob), _) => {
                    let blob = self.repo.find_blob(entry.id())?;
                    let bytes = blob.content();
                    EntryContent::Blob(bytes[..bytes.len().min(max_bytes + 1)].to_vec())
                }
                _ => EntryContent::Dir,
            };
            out.push((path, content, entry.id().to_string()));
        }
        Ok(out)
    }

    /// Every file (blob) under `dir` in `commit`, at any depth, as repository paths.
    pub fn files_under(&self, commit: CommitId, dir: &str) -> anyhow::Result<Vec<String>> {
        let dir = dir.trim_end_matches('/');
        let tree = self.repo.find_commit(oid(commit))?.tree()?;
        let sub = match tree.get_path(Path::new(dir)) {
            Ok(e) if e.kind() == Some(ObjectType::Tree) => self.repo.find_tree(e.id())?,
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("failed to read {dir}/")),
        };
        let mut out = Vec::new();
        sub.walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
            if entry.kind() == Some(ObjectType::Blob) {
                if let Ok(name) = entry.name() {
                    out.push(format!("{dir}/{parent}{name}"));
                }
            }
            git2::TreeWalkResult::Ok
        })
        .with_context(|| format!("failed to walk {dir}/"))?;
        Ok(out)
    }

    /// For each path, the first-parent commit that brought its current content, and that
    /// commit's distance from the tip (0 = tip).
    ///
    /// The walk stops as soon as every path is resolved, so its cost follows the age of the
    /// oldest pending request, not the length of history; `max_walk` bounds it, after which
    /// unresolved paths are credited to the last commit walked. In a shallow mirror, a walk
    /// that reaches the boundary with paths unresolved fails with [`NeedsDeeper`]: a commit
    /// there only looks like the first, and crediting it would be wrong.
    pub fn introducing_commits(
        &self,
        tip: CommitId,
        paths: &[String],
        max_walk: usize,
    ) -> anyhow::Result<HashMap<String, (CommitId, usize)>> {
        let mut found = HashMap::new();
        let mut pending: HashSet<&String> = paths.iter().collect();
        let mut commit = self.repo.find_commit(oid(tip))?;
        let mut depth = 0usize;
        let cut = self.shallow_roots();
        while !pending.is_empty() {
            if cut.contains(&commit.id()) && depth < max_walk {
                return Err(NeedsDeeper { depth }.into());
            }
            let tree = commit.tree()?;
            let parent = commit.parent(0).ok();
            let parent_tree = parent.as_ref().map(|p| p.tree()).transpose()?;
            let mut resolved = Vec::new();
            for path in &pending {
                let here = tree.get_path(Path::new(path.as_str())).ok().map(|e| e.id());
                let before = parent_tree
                    .as_ref()
                    .and_then(|t| t.get_path(Path::new(path.as_str())).ok())
                    .map(|e| e.id());
                if parent.is_none() || here != before || depth >= max_walk {
                    resolved.push(*path);
                }
            }
            for path in resolved {
                found.insert(path.clone(), (id(commit.id()), depth));
                pending.remove(path);
            }
            match parent {
                Some(p) if !pending.is_empty() => {
                    commit = p;
                    depth += 1;
                }
                _ => break,
            }
        }
        Ok(found)
    }
}
