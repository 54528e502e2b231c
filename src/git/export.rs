//! Writing a commit's tree to disk for a container to mount: modes kept, links and submodules
//! left out, unsafe names refused, and the directories a handler must not see hidden.

use std::path::Path;

use std::os::unix::ffi::OsStrExt;

use anyhow::Context;
use git2::build::TreeUpdateBuilder;
use git2::ObjectType;

use super::{oid, CommitId, Mirror, Oid};

/// Whether a tree entry's name is safe to write as one path component.
pub(crate) fn safe_entry_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.eq_ignore_ascii_case(b".git")
        && !name.contains(&b'/')
        && !name.contains(&0)
}

impl Mirror {
    /// Write the tree of `commit` to `dest` (a fresh directory), for a read-only mount.
    ///
    /// A walk of our own rather than a libgit2 checkout: a checkout from a bare mirror fails on
    /// any submodule (one committed into the inbox would block every later request), and a
    /// tree crafted with low-level tools may hold names a checkout must never write. Files get
    /// 0644 or 0755, symbolic links stay links (they resolve inside the container), a
    /// submodule becomes an empty directory, and `.`, `..`, `.git` or names with `/` or NUL
    /// are skipped.
    pub fn export(&self, commit: CommitId, dest: &Path) -> anyhow::Result<()> {
        let tree = self.repo.find_commit(oid(commit))?.tree_id();
        self.export_tree(tree, dest)
    }

    /// Write the tree `tree` to `dest`, as [`Mirror::export`] does for a commit's.
    pub(super) fn export_tree(&self, tree: Oid, dest: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let root = tree;
        std::fs::create_dir_all(dest)
            .with_context(|| format!("failed to create {}", dest.display()))?;
        let tree = self.repo.find_tree(tree)?;
        let mut pending = vec![(tree, dest.to_path_buf())];
        while let Some((tree, dir)) = pending.pop() {
            for entry in tree.iter() {
                let name = entry.name_bytes();
                if !safe_entry_name(name) {
                    tracing::warn!(tree = %root, name = ?String::from_utf8_lossy(name), "skipped a tree entry whose name is unsafe to write");
                    continue;
                }
                let path = dir.join(std::ffi::OsStr::from_bytes(name));
                let mut write = || -> anyhow::Result<()> {
                    match entry.kind() {
                        Some(ObjectType::Tree) => {
                            std::fs::create_dir(&path)?;
                            std::fs::set_permissions(
                                &path,
                                std::fs::Permissions::from_mode(0o755),
                            )?;
                            pending.push((self.repo.find_tree(entry.id())?, path.clone()));
                        }
                        Some(ObjectType::Blob) => {
                            let blob = self.repo.find_blob(entry.id())?;
                            if entry.filemode() == 0o120000 {
                                let target = std::ffi::OsStr::from_bytes(blob.content());
                                std::os::unix::fs::symlink(target, &path)?;
                            } else {
                                std::fs::write(&path, blob.content())?;
                                let mode = if entry.filemode() & 0o111 != 0 {
                                    0o755
                                } else {
                                    0o644
                                };
                                std::fs::set_permissions(
                                    &path,
                                    std::fs::Permissions::from_mode(mode),
                                )?;
                            }
                        }
                        // A submodule: its commit is not in this repository.
                        _ => std::fs::create_dir(&path)?,
                    }
                    Ok(())
                };
                write().with_context(|| {
                    format!(
                        "failed to export {root} to {}: {}",
                        dest.display(),
                        path.display()
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The tree of `commit` without the directories in `hidden` (e.g. `logs/`): what a
    /// handler's checkout shows. Commits that differ only there give the same id.
    pub(super) fn visible_tree(&self, commit: CommitId, hidden: &[&str]) -> anyhow::Result<Oid> {
        let tree = self.repo.find_commit(oid(commit))?.tree()?;
        let mut update = TreeUpdateBuilder::new();
        let mut changed = false;
        for dir in hidden {
            let dir = dir.trim_matches('/');
            if !dir.is_empty() && tree.get_path(Path::new(dir)).is_ok() {
                update.remove(dir);
                changed = true;
            }
        }
        if !changed {
            return Ok(tree.id());
        }
        update
            .create_updated(&self.repo, &tree)
            .with_context(|| format!("failed to make the visible tree of {commit}"))
    }
}
