//! Per-resource locks that hold across processes: one lock file per resource under the state
//! directory, taken with `flock`. A held lock makes the caller wait; it never fails the work.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The lock directory of a runner's state.
#[derive(Debug, Clone)]
pub struct ResourceLocks {
    dir: PathBuf,
}

/// A held resource lock; released on drop (closing the file releases the `flock`).
#[derive(Debug)]
pub struct ResourceLock {
    _file: File,
    /// The resource.
    pub resource: String,
}

impl ResourceLocks {
    /// Locks under `dir` (created if needed).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create lock dir {}", dir.display()))?;
        Ok(ResourceLocks {
            dir: dir.to_path_buf(),
        })
    }

    /// The lock file of `resource`.
    pub fn path(&self, resource: &str) -> PathBuf {
        self.dir.join(format!("{}.lock", file_name(resource)))
    }

    /// Take the lock, calling `on_wait` once if another holder makes us wait.
    pub async fn acquire(
        &self,
        resource: &str,
        on_wait: impl FnOnce(),
    ) -> anyhow::Result<ResourceLock> {
        let path = self.path(resource);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                on_wait();
                let file = file
                    .try_clone()
                    .context("failed to clone lock file handle")?;
                tokio::task::spawn_blocking(move || file.lock())
                    .await
                    .context("failed to join the lock waiter")?
                    .with_context(|| format!("failed to lock {}", path.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("failed to lock {}", path.display()));
            }
        }
        Ok(ResourceLock {
            _file: file,
            resource: resource.to_string(),
        })
    }
}

/// A file name for any resource string: safe characters kept, others as `%XX`.
fn file_name(resource: &str) -> String {
    let mut out = String::new();
    for b in resource.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 180 {
        // Keep names within file-system limits; the hash keeps long keys distinct.
        out.truncate(160);
        out.push_str(&format!("-{:016x}", super::fnv1a(resource)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn names_are_safe() {
        assert_eq!(file_name("web"), "web");
        assert_eq!(file_name("../x"), "%2E.%2Fx");
        assert_eq!(file_name("a b"), "a%20b");
        assert!(file_name(&"x".repeat(500)).len() < 200);
    }

    #[tokio::test]
    async fn second_holder_waits_then_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ResourceLocks::new(dir.path()).unwrap();
        let first = locks
            .acquire("db", || panic!("first must not wait"))
            .await
            .unwrap();
        let waited = Arc::new(AtomicBool::new(false));
        let w = waited.clone();
        let l2 = locks.clone();
        let second = tokio::spawn(async move {
            l2.acquire("db", move || w.store(true, Ordering::SeqCst))
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(waited.load(Ordering::SeqCst));
        assert!(!second.is_finished());
        drop(first);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.resource, "db");
        // Another resource is independent.
        locks
            .acquire("web", || panic!("web is free"))
            .await
            .unwrap();
    }
}
