//! A request's result in the state directory before it is published: one directory per
//! request holding its run log, its status, the request file its container reads, and the
//! journal of its attempt. The one place these names are written.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The files of one request's result in the state directory.
#[derive(Debug, Clone)]
pub struct ResultDir {
    /// The directory (`<state>/results/<remote>/<request>`).
    pub dir: PathBuf,
}

impl ResultDir {
    /// The result directory of `id` under `root`, as it is now (it may not exist).
    pub fn of(root: &Path, id: &str) -> Self {
        ResultDir { dir: root.join(id) }
    }

    /// The result directory at `dir`.
    pub fn at(dir: PathBuf) -> Self {
        ResultDir { dir }
    }

    /// An empty result directory for `id`, readable by the container user: whatever an
    /// earlier attempt left there is cleared.
    pub fn fresh(root: &Path, id: &str) -> anyhow::Result<Self> {
        let out = Self::of(root, id);
        if out.dir.exists() {
            std::fs::remove_dir_all(&out.dir)
                .with_context(|| format!("failed to clear {}", out.dir.display()))?;
        }
        out.ensure()?;
        Ok(out)
    }

    /// Make sure the directory exists and the container user may read it (an attempt that
    /// goes on where an earlier process left it).
    pub fn ensure(&self) -> anyhow::Result<()> {
        crate::exec::ensure_world_readable_dir(&self.dir)
            .with_context(|| format!("failed to create {}", self.dir.display()))?;
        Ok(())
    }

    /// The JSONL run log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }

    /// The status file: the request reached its final state.
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// The request as the container reads it.
    pub fn request(&self) -> PathBuf {
        self.dir.join("request.json")
    }

    /// The journal of the current attempt.
    pub fn journal(&self) -> PathBuf {
        self.dir.join("attempt.json")
    }
}
