//! Checkouts: the trees handlers' containers mount read-only, one directory per visible tree.
//!
//! A request's checkout is the tree of the commit that merged it, less what its handler does
//! not see (the outbox and the archive, which grow with every finished request). It lives at
//! `<work>/checkouts/<tree id>`: requests whose commits show the same tree share it, and it is
//! kept from pass to pass until a pass that no longer uses it finds no container mounting it.
//! Several runner processes may share the work directory: each holds a shared `flock` on
//! `checkouts/.lock` while it uses checkouts, and a sweep runs only when it can hold the lock
//! alone.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::Oid;

use super::{CommitId, Mirror};

/// The checkouts of one pass.
pub struct Checkouts {
    root: PathBuf,
    /// The shared lock, held while this pass may use checkouts.
    lock: Option<File>,
    /// Checkouts this pass uses, by tree.
    used: HashMap<Oid, PathBuf>,
}

impl Checkouts {
    /// The checkouts under `work`. Per-process directories of dead processes that earlier
    /// releases left (`checkouts-<pid>`) go, but for `keep`: processes whose containers this
    /// pass follows have them mounted.
    pub fn new(work: &Path, keep: &[u32]) -> anyhow::Result<Self> {
        if let Ok(entries) = std::fs::read_dir(work) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("checkouts-")
                    .and_then(|p| p.parse::<u32>().ok());
                let dead = pid.is_some_and(|p| {
                    !keep.contains(&p) && !Path::new(&format!("/proc/{p}")).exists()
                });
                if dead {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = work.join("checkouts");
        crate::exec::ensure_world_readable_dir(&root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        // Containers are told absolute paths, and the engine names its mounts by them.
        let root = std::fs::canonicalize(&root)
            .with_context(|| format!("failed to resolve {}", root.display()))?;
        let lock = open_lock(&root)?;
        lock.lock_shared()
            .with_context(|| format!("failed to lock {}", root.display()))?;
        Ok(Checkouts {
            root,
            lock: Some(lock),
            used: HashMap::new(),
        })
    }

    /// The checkout of `commit` without the directories in `hidden`, exported on first use.
    pub fn get(
        &mut self,
        mirror: &Mirror,
        commit: CommitId,
        hidden: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let tree = mirror.visible_tree(commit, hidden)?;
        if let Some(p) = self.used.get(&tree) {
            return Ok(p.clone());
        }
        let dest = self.root.join(tree.to_string());
        if !dest.is_dir() {
            // Exported aside and renamed into place, so a checkout that exists is complete.
            let aside = self.root.join(format!(".{tree}-{}", std::process::id()));
            if aside.exists() {
                std::fs::remove_dir_all(&aside)
                    .with_context(|| format!("failed to clear {}", aside.display()))?;
            }
            mirror.export_tree(tree, &aside)?;
            crate::exec::ensure_world_readable_dir(&aside)?;
            if let Err(e) = std::fs::rename(&aside, &dest) {
                // Another process exported the same tree first: its copy serves.
                let _ = std::fs::remove_dir_all(&aside);
                if !dest.is_dir() {
                    return Err(e).with_context(|| {
                        format!("failed to move a checkout to {}", dest.display())
                    });
                }
            }
        }
        self.used.insert(tree, dest.clone());
        Ok(dest)
    }

    /// How many checkouts this pass uses.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// End of the pass: remove the checkouts it did not use that no container mounts
    /// (`mounted`: the engine's bind sources), and what interrupted exports left — unless
    /// another process is using checkouts right now. How many went.
    pub fn sweep(&mut self, mounted: &[PathBuf]) -> usize {
        self.lock = None;
        let Ok(lock) = open_lock(&self.root) else {
            return 0;
        };
        if lock.try_lock().is_err() {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir()
                || self.used.values().any(|u| *u == path)
                || mounted.iter().any(|m| m.starts_with(&path))
            {
                continue;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn open_lock(root: &Path) -> anyhow::Result<File> {
    let path = root.join(".lock");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))
}
