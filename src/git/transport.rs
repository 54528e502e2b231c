//! How the mirror reaches its remote when things go wrong: which git failures are worth
//! another try (and how often), and how a remote that is a local path is written.
//!
//! A remote that is a path is written directly, never through libgit2's local push: that
//! push lists every ref of the remote and fails when one vanishes meanwhile (another runner
//! dropping a claim), and its ref creation checks for an existing ref outside the ref's lock,
//! so two runners could both "create" one claim. Here objects are copied into the remote's
//! object store, then the ref is changed inside a ref transaction that compares its value
//! under the lock: a real compare-and-swap, as a git server's receive-pack does.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};
use git2::{ErrorClass, ErrorCode, ObjectType, Oid, Repository};

use super::push::Refusal;

/// The back-off of every retried remote operation: pushes (with their replays), fetches,
/// claims. `attempts` counts the first try.
pub(crate) fn backoff(attempts: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_max_times(attempts.saturating_sub(1))
        .with_jitter()
}

/// Whether a failed fetch or push may succeed if tried again: the network, the server, a
/// lock held by another writer, a ref that vanished while the remote's refs were listed.
/// Credentials, certificates, a missing repository, a bad URL and refusals are final.
pub(crate) fn transient(e: &git2::Error) -> bool {
    match e.code() {
        ErrorCode::Auth | ErrorCode::Certificate | ErrorCode::NotFastForward => return false,
        ErrorCode::Locked => return true,
        _ => {}
    }
    match e.class() {
        // libgit2 lists a local remote's refs one by one; one deleted meanwhile is not found
        // (reported with the generic code through a fetch or a push).
        ErrorClass::Reference => {
            e.code() == ErrorCode::NotFound || e.message().ends_with("not found")
        }
        ErrorClass::Http => match http_status(e.message()) {
            Some(code) => code >= 500 || code == 408 || code == 429,
            None => true,
        },
        // A git daemon's refusal (`remote error: access denied or repository not
        // exported`) comes as a network error, and will say the same next time.
        ErrorClass::Net if e.message().starts_with("remote error:") => false,
        // The https and ssh transports' failures while libgit2 reads an answer.
        ErrorClass::Net if super::ssh::is_final(e.message()) => false,
        ErrorClass::Net => match http_status(e.message()) {
            Some(code) => code >= 500 || code == 408 || code == 429,
            None => true,
        },
        ErrorClass::Os | ErrorClass::Ssl | ErrorClass::Zlib => true,
        // The ssh client could not start, or the URL is not one.
        ErrorClass::Ssh => false,
        _ => false,
    }
}

/// The HTTP status a libgit2 message reports ("unexpected http status code: 503").
fn http_status(message: &str) -> Option<u16> {
    let (_, after) = message.split_once("status code: ")?;
    after.get(..3)?.parse().ok()
}

/// Run `op` on the repository at `git_dir`, trying again with [`backoff`] while it fails with
/// a [`transient`] error. Before another try after a lock refused it, the locks a killed
/// writer left in `git_dir` are cleared ([`clear_stale_locks`]): waiting never frees those.
pub(crate) fn retry<T>(
    git_dir: &Path,
    attempts: usize,
    what: &str,
    mut op: impl FnMut() -> Result<T, git2::Error>,
) -> Result<T, git2::Error> {
    let mut locked = false;
    let op = || {
        if locked {
            clear_stale_locks(git_dir);
        }
        let result = op();
        locked = matches!(&result, Err(e) if e.code() == ErrorCode::Locked);
        result
    };
    op.retry(backoff(attempts))
        .when(transient)
        .notify(|e: &git2::Error, wait: Duration| {
            tracing::warn!(error = %e.message(), retry_in = ?wait, "{what} failed; trying again");
        })
        .call()
}

/// Copy into `to` every object reachable from `root` that it lacks; the walk stops at what
/// `to` already has, so the cost follows what is new (a result commit's changed trees and
/// blobs), not the repository's size. Children are written before the objects naming them.
pub(crate) fn copy_objects(from: &Repository, to: &Repository, root: Oid) -> anyhow::Result<()> {
    let (src, dst) = (from.odb()?, to.odb()?);
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(oid) = stack.pop() {
        if !seen.insert(oid) || dst.exists(oid) {
            continue;
        }
        match src.read_header(oid)?.1 {
            ObjectType::Commit => {
                let c = from.find_commit(oid)?;
                stack.push(c.tree_id());
                stack.extend(c.parent_ids());
            }
            ObjectType::Tree => {
                let t = from.find_tree(oid)?;
                stack.extend(
                    t.iter()
                        .filter(|e| matches!(e.kind(), Some(ObjectType::Tree | ObjectType::Blob)))
                        .map(|e| e.id()),
                );
            }
            _ => {}
        }
        missing.push(oid);
    }
    for oid in missing.into_iter().rev() {
        let obj = src.read(oid)?;
        dst.write(obj.kind(), obj.data())?;
    }
    Ok(())
}

/// How long [`swap_ref`] waits for another writer's lock on a ref.
const REF_LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// How old a lock file must be to count as left by a writer that died holding it: git holds
/// a ref's lock for the moment of one update (milliseconds, even packed-refs), never for
/// seconds; the retries of a locked fetch or push outlast this.
const STALE_LOCK: Duration = Duration::from_secs(2);

/// Whether the lock file at `path` was left by a writer that died holding it.
fn stale(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_LOCK)
}

/// Remove the lock files a process killed in the middle of an update left in the git
/// directory `git_dir` (`refs/**.lock` and the top-level ones: `packed-refs.lock`,
/// `shallow.lock`, `config.lock`). libgit2 never removes another process's lock, so one left
/// by a runner killed mid-fetch would refuse every later update of that ref, for good. Only
/// locks older than [`STALE_LOCK`] go: a live writer's is younger. How many were removed.
pub(crate) fn clear_stale_locks(git_dir: &Path) -> usize {
    let mut removed = 0;
    let mut dirs = vec![git_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            // Below the top level, only the refs hold locks worth looking for.
            if is_dir && (dir != git_dir || entry.file_name() == "refs") {
                dirs.push(path);
            } else if !is_dir
                && path.extension().is_some_and(|e| e == "lock")
                && stale(&path)
                && std::fs::remove_file(&path).is_ok()
            {
                tracing::warn!(lock = %path.display(), "removed a lock left by a git writer that died holding it");
                removed += 1;
            }
        }
    }
    removed
}

/// Set `refname` in `repo` to `new` (`None`: delete it) if, and only if, it is `expected`
/// now (`None`: it does not exist), compared under the ref's lock. `Ok(Err(reason))` when it
/// is not, or another writer holds the lock.
pub(crate) fn swap_ref(
    repo: &Repository,
    refname: &str,
    new: Option<Oid>,
    expected: Option<Oid>,
) -> anyhow::Result<Result<(), Refusal>> {
    // Another writer holds the lock for the moment of its own swap: wait for it a little, as
    // git does (`core.filesRefLockTimeout`), instead of refusing at once.
    let mut wait = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    let mut tx = loop {
        let mut tx = repo.transaction()?;
        match tx.lock_ref(refname) {
            Ok(()) => break tx,
            Err(e) if e.code() == ErrorCode::Locked && waited < REF_LOCK_PATIENCE => {
                // A writer killed while it held the lock never gives it back.
                let lock = repo.path().join(format!("{refname}.lock"));
                if stale(&lock) && std::fs::remove_file(&lock).is_ok() {
                    tracing::warn!(lock = %lock.display(), "removed a lock left by a git writer that died holding it");
                    continue;
                }
                std::thread::sleep(wait);
                waited += wait;
                wait = (wait * 2).min(Duration::from_millis(100));
            }
            Err(e) if e.code() == ErrorCode::Locked => {
                return Ok(Err(Refusal::Locked {
                    refname: refname.to_string(),
                }))
            }
            Err(e) => return Err(e.into()),
        }
    };
    let current = match repo.find_reference(refname) {
        Ok(r) => r.target(),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    if current != expected {
        return Ok(Err(Refusal::moved(refname, current, expected)));
    }
    match new {
        Some(oid) => {
            let sig = git2::Signature::now("codex-runner", "codex-runner@localhost")?;
            tx.set_target(refname, oid, Some(&sig), "codex-runner")?;
        }
        None if current.is_some() => tx.remove(refname)?,
        None => return Ok(Ok(())),
    }
    tx.commit()?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_are_tried_again() {
        let e = |class, code, msg: &str| git2::Error::new(code, class, msg);
        let cases = [
            (
                e(
                    ErrorClass::Reference,
                    ErrorCode::NotFound,
                    "reference 'refs/codex/claims/main/x' not found",
                ),
                true,
            ),
            (
                e(
                    ErrorClass::Reference,
                    ErrorCode::GenericError,
                    "reference 'refs/codex/claims/main/y' not found",
                ),
                true,
            ),
            (
                e(ErrorClass::Net, ErrorCode::GenericError, "early EOF"),
                true,
            ),
            // What the https and ssh transports report while libgit2 reads an answer.
            (
                e(
                    ErrorClass::Net,
                    ErrorCode::GenericError,
                    "unexpected http status code: 502 from https://forge.example/ops.git",
                ),
                true,
            ),
            (
                e(
                    ErrorClass::Net,
                    ErrorCode::GenericError,
                    "unexpected http status code: 403 from https://forge.example/ops.git",
                ),
                false,
            ),
            (
                e(
                    ErrorClass::Net,
                    ErrorCode::GenericError,
                    "ssh: git@forge.example ended the connection (exit 255): Permission denied (publickey).",
                ),
                false,
            ),
            (
                e(
                    ErrorClass::Net,
                    ErrorCode::GenericError,
                    "ssh: git@forge.example ended the connection (exit 255): Connection reset by peer",
                ),
                true,
            ),
            (
                e(
                    ErrorClass::Net,
                    ErrorCode::GenericError,
                    "remote error: access denied or repository not exported: /ops.git",
                ),
                false,
            ),
            (
                e(
                    ErrorClass::Os,
                    ErrorCode::GenericError,
                    "failed to connect: Connection refused",
                ),
                true,
            ),
            (
                e(
                    ErrorClass::Http,
                    ErrorCode::GenericError,
                    "unexpected http status code: 503",
                ),
                true,
            ),
            (
                e(
                    ErrorClass::Http,
                    ErrorCode::GenericError,
                    "unexpected http status code: 404",
                ),
                false,
            ),
            (
                e(ErrorClass::Http, ErrorCode::Auth, "authentication required"),
                false,
            ),
            (
                e(ErrorClass::Reference, ErrorCode::Locked, "failed to lock"),
                true,
            ),
            (
                e(
                    ErrorClass::Repository,
                    ErrorCode::NotFound,
                    "could not find repository at '/nope'",
                ),
                false,
            ),
            (
                e(
                    ErrorClass::Callback,
                    ErrorCode::User,
                    "no (more) credentials to offer",
                ),
                false,
            ),
            (
                e(
                    ErrorClass::Reference,
                    ErrorCode::NotFastForward,
                    "cannot push non-fastforwardable reference",
                ),
                false,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(transient(&err), want, "{}", err.message());
        }
    }

    #[test]
    fn a_local_ref_changes_only_from_the_value_expected() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path()).unwrap();
        let tree = repo.treebuilder(None).unwrap().write().unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let a = repo.commit(None, &sig, &sig, "a", &tree, &[]).unwrap();
        let b = repo.commit(None, &sig, &sig, "b", &tree, &[]).unwrap();
        let r = "refs/codex/claims/main/x";
        assert!(swap_ref(&repo, r, Some(a), None).unwrap().is_ok());
        // A second creation loses, whoever checked first.
        assert!(swap_ref(&repo, r, Some(b), None).unwrap().is_err());
        assert!(swap_ref(&repo, r, Some(b), Some(b)).unwrap().is_err());
        assert!(swap_ref(&repo, r, Some(b), Some(a)).unwrap().is_ok());
        assert_eq!(repo.refname_to_id(r).unwrap(), b);
        assert!(swap_ref(&repo, r, None, Some(a)).unwrap().is_err());
        assert!(swap_ref(&repo, r, None, Some(b)).unwrap().is_ok());
        assert!(repo.find_reference(r).is_err());
        // Another writer's lock is waited out for a moment, not taken for a refusal.
        let lock = tmp.path().join(format!("{r}.lock"));
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, "").unwrap();
        let releaser = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                std::fs::remove_file(lock).unwrap();
            })
        };
        assert!(swap_ref(&repo, r, Some(a), None).unwrap().is_ok());
        releaser.join().unwrap();
        // One held for longer than that is a refusal, with its reason.
        std::fs::write(&lock, "").unwrap();
        let held = swap_ref(&repo, r, Some(b), Some(a)).unwrap();
        assert!(matches!(held, Err(Refusal::Locked { .. })), "{held:?}");
        // One its writer left behind when it was killed is cleared, and the swap goes on.
        age(&lock);
        assert!(swap_ref(&repo, r, Some(b), Some(a)).unwrap().is_ok());
        assert!(!lock.exists());
    }

    /// Make the file at `path` look 60 s old.
    fn age(path: &Path) {
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn locks_a_killed_writer_left_are_cleared_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path()).unwrap();
        let git_dir = repo.path().to_path_buf();
        let dead = [
            git_dir.join("refs/remotes/origin/main.lock"),
            git_dir.join("shallow.lock"),
            git_dir.join("packed-refs.lock"),
        ];
        let live = git_dir.join("refs/heads/main.lock");
        let not_a_lock = git_dir.join("objects/pack/x.lock");
        for p in dead.iter().chain([&live, &not_a_lock]) {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        for p in dead.iter().chain([&not_a_lock]) {
            age(p);
        }
        assert_eq!(clear_stale_locks(&git_dir), 3);
        assert!(dead.iter().all(|p| !p.exists()));
        assert!(live.exists(), "a live writer's lock stays");
        assert!(
            not_a_lock.exists(),
            "only refs and the top level are looked at"
        );
    }

    #[test]
    fn objects_are_copied_only_as_far_as_the_target_lacks_them() {
        let tmp = tempfile::tempdir().unwrap();
        let from = Repository::init_bare(tmp.path().join("from")).unwrap();
        let to = Repository::init_bare(tmp.path().join("to")).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let blob = from.blob(b"hello\n").unwrap();
        let mut tb = from.treebuilder(None).unwrap();
        tb.insert("a.txt", blob, 0o100644).unwrap();
        let tree = from.find_tree(tb.write().unwrap()).unwrap();
        let first = from.commit(None, &sig, &sig, "1", &tree, &[]).unwrap();
        copy_objects(&from, &to, first).unwrap();
        assert!(to.find_commit(first).is_ok());
        assert_eq!(to.find_blob(blob).unwrap().content(), b"hello\n");
        let parent = from.find_commit(first).unwrap();
        let second = from
            .commit(None, &sig, &sig, "2", &tree, &[&parent])
            .unwrap();
        copy_objects(&from, &to, second).unwrap();
        assert_eq!(to.find_commit(second).unwrap().parent_id(0).unwrap(), first);
    }
}
