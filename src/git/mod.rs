//! The ONLY place that talks to git (through git2).
//!
//! The runner keeps a bare mirror of the remote in its work directory. It reads trees there,
//! exports the tree of a commit for containers to mount, and publishes results by building a
//! commit on the remote tip and pushing it without force; a rejected push fetches, rebuilds the
//! same changes on the new tip and tries again with back-off, so a foreign commit is never lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use backon::BlockingRetryable;
use git2::build::TreeUpdateBuilder;
use git2::{FetchOptions, ObjectType, RemoteCallbacks, Repository, Signature};

use std::os::unix::ffi::OsStrExt;

use crate::contract::handlers::PathKind;
use crate::plan::EntryContent;

mod checkouts;
pub mod claims;
mod https;
mod push;
pub mod seed;
mod ssh;
mod transport;

pub use push::{Expect, Outcomes, RefUpdate};

pub use checkouts::Checkouts;

/// Fetches and pushes this process has asked of remotes (see [`round_trips`]).
static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static PUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many fetches and pushes (ref updates: results, claims, claim deletions) this process
/// has asked of remotes so far, each counted once however often it was retried. Against a
/// forge each is a round trip of hundreds of milliseconds, so the benchmark reports them per
/// request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RoundTrips {
    /// Fetches (branches, claims, pull requests, deepenings).
    pub fetches: u64,
    /// Pushes.
    pub pushes: u64,
}

/// The round trips so far; subtract an earlier reading for those of one pass.
pub fn round_trips() -> RoundTrips {
    use std::sync::atomic::Ordering::Relaxed;
    RoundTrips {
        fetches: FETCHES.load(Relaxed),
        pushes: PUSHES.load(Relaxed),
    }
}

impl std::ops::Sub for RoundTrips {
    type Output = RoundTrips;
    fn sub(self, earlier: RoundTrips) -> RoundTrips {
        RoundTrips {
            fetches: self.fetches.saturating_sub(earlier.fetches),
            pushes: self.pushes.saturating_sub(earlier.pushes),
        }
    }
}

/// A commit id; the engine names commits with this type and never touches git2 itself.
pub use git2::Oid;

/// `url` without credentials (`https://user:token@host/x` → `https://host/x`), for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => {
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}/{path}")
            }
            None => format!(
                "{scheme}://{}",
                rest.rsplit_once('@').map_or(rest, |(_, h)| h)
            ),
        },
        None => url.to_string(),
    }
}

/// The libgit2 version this binary links, for `selftest`.
pub fn libgit2_version() -> String {
    let (major, minor, patch) = git2::Version::get().libgit2_version();
    format!("{major}.{minor}.{patch}")
}

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

/// Who the runner's commits are by.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
}

/// The result of publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The commit now at the branch tip.
    pub commit: String,
    /// How many times the push was rejected and the changes replayed.
    pub replays: u32,
    /// The tip it was built on.
    pub parent: String,
}

/// A bare mirror of the remote.
pub struct Mirror {
    repo: Repository,
    url: String,
    token: Option<String>,
    /// Tries of each fetch and push, the first one included (see [`transport::retry`]).
    attempts: usize,
    /// A repository read where it is (`codex-runner logs` on a local path): its own branches
    /// are the tips, nothing is fetched.
    in_place: bool,
    /// Fetch shallow into an empty mirror and deepen on demand (see [`Mirror::set_shallow`]).
    shallow: bool,
}

/// How many first-parent commits the first fetch into an empty shallow mirror brings.
const FIRST_DEPTH: i32 = 32;

/// The walk for the commits that brought the pending requests reached the mirror's shallow
/// boundary with requests still unresolved: the mirror must be deepened past `depth`.
#[derive(Debug, thiserror::Error)]
#[error("the mirror's history ends {depth} commits below the tip; it must be deepened")]
pub struct NeedsDeeper {
    /// First-parent commits walked from the tip to the boundary.
    pub depth: usize,
}

/// What a fetch found on the remote.
pub(crate) struct Fetched {
    /// The refs the remote had (all it advertised, or those the refspec matched); `None`
    /// when that is not known.
    refs: Option<Vec<String>>,
}

impl Fetched {
    /// Whether the remote had `refname` (`true` when that is not known).
    pub(crate) fn has(&self, refname: &str) -> bool {
        self.refs
            .as_ref()
            .is_none_or(|refs| refs.iter().any(|r| r == refname))
    }
}

/// A failed push that may succeed on a newer tip.
#[derive(Debug, thiserror::Error)]
#[error("push to {branch} was rejected: {reason}")]
pub struct PushRejected {
    branch: String,
    reason: String,
}

impl Mirror {
    /// Open (or create) the mirror of `url` under `work_dir`; `token` authenticates http(s).
    pub fn open(work_dir: &Path, url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let dir = work_dir.join("mirror.git");
        if !dir.exists() {
            if let Some(path) = local_path(url) {
                seed_from_local(work_dir, &dir, &path)?;
            }
        }
        let repo = if dir.exists() {
            Repository::open_bare(&dir)
                .with_context(|| format!("failed to open mirror {}", dir.display()))?
        } else {
            std::fs::create_dir_all(work_dir)
                .with_context(|| format!("failed to create work dir {}", work_dir.display()))?;
            Repository::init_bare(&dir)
                .with_context(|| format!("failed to create mirror {}", dir.display()))?
        };
        match repo.find_remote("origin") {
            Ok(r) if r.url().ok() == Some(url) => {}
            Ok(_) => repo
                .remote_set_url("origin", url)
                .context("failed to update the mirror's remote")?,
            Err(_) => {
                repo.remote("origin", url)
                    .context("failed to add the mirror's remote")?;
            }
        }
        Ok(Mirror {
            repo,
            url: url.to_string(),
            token: token.map(str::to_string),
            attempts: 5,
            in_place: false,
            shallow: false,
        })
    }

    /// Read `remote` where it is when it is a repository on this host's file system (a
    /// clone or a bare repository, by path or `file://`), for looking only: [`Mirror::fetch`]
    /// gives its own branch's tip and fetches nothing. `None` for a served remote.
    pub fn in_place(remote: &str) -> anyhow::Result<Option<Self>> {
        let Some(path) = local_path(remote) else {
            return Ok(None);
        };
        let repo = Repository::open(&path)
            .with_context(|| format!("{} is not a git repository", path.display()))?;
        Ok(Some(Mirror {
            repo,
            url: path.display().to_string(),
            token: None,
            attempts: 1,
            in_place: true,
            shallow: false,
        }))
    }

    /// How many times each fetch and push is tried while it fails in a way that may pass
    /// (the network, the server, a lock, a ref vanishing while listed); at least once.
    pub fn set_attempts(&mut self, attempts: usize) {
        self.attempts = attempts.max(1);
    }

    /// Fetch shallow: a branch's first fetch into this mirror brings only its last
    /// [`FIRST_DEPTH`] commits, and [`Mirror::introducing_commits`] asks for more
    /// ([`NeedsDeeper`]) only when a pending request is older than that, so a new host's
    /// first pass costs what the tip holds, not what the history holds. Later fetches bring
    /// only what is new. A remote that is a local path stays whole (libgit2's local
    /// transport does no shallow fetches): its mirror starts with the remote's object files
    /// hard-linked instead (see [`Mirror::open`]).
    pub fn set_shallow(&mut self, shallow: bool) {
        self.shallow = shallow && local_path(&self.url).is_none();
    }

    /// The commits at which this mirror's history is cut (`shallow`, as git keeps it).
    fn shallow_roots(&self) -> HashSet<Oid> {
        let Ok(text) = std::fs::read_to_string(self.repo.path().join("shallow")) else {
            return HashSet::new();
        };
        text.lines()
            .filter_map(|l| Oid::from_str(l.trim()).ok())
            .collect()
    }

    /// Authenticate later fetches and pushes with `token` (a refreshed installation token).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The remote URL without credentials, for messages.
    pub fn shown_url(&self) -> String {
        redact(&self.url)
    }

    /// Fetch one refspec from the remote; the refs it had.
    fn fetch_spec(&self, spec: &str, what: &str) -> anyhow::Result<Fetched> {
        self.fetch_with(spec, what, false)
    }

    /// Fetch one refspec; with `prune`, local refs under it that the remote no longer has go.
    fn fetch_with(&self, spec: &str, what: &str, prune: bool) -> anyhow::Result<Fetched> {
        self.fetch_depth(spec, what, prune, 0)
    }

    /// Fetch one refspec (`+src:dst`, each side a ref or a prefix ending in `*`), `depth`
    /// first-parent commits deep from the tips (0: everything not yet here; a path remote
    /// always gives everything).
    fn fetch_depth(
        &self,
        spec: &str,
        what: &str,
        prune: bool,
        depth: i32,
    ) -> anyhow::Result<Fetched> {
        FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(path) = local_path(&self.url) {
            return self
                .fetch_from_path(&path, spec, prune)
                .with_context(|| format!("failed to fetch {what} from {}", self.shown_url()));
        }
        let mut remote = self
            .repo
            .find_remote("origin")
            .context("failed to find the mirror's remote")?;
        let _auth = https::Auth::scope(self.token.as_deref());
        transport::retry(self.attempts, "a fetch", || {
            let mut opts = FetchOptions::new();
            opts.remote_callbacks(callbacks(self.token.as_deref()));
            if prune {
                opts.prune(git2::FetchPrune::On);
            }
            if depth > 0 {
                opts.depth(depth);
            }
            remote.fetch(&[spec], Some(&mut opts), None)
        })
        .with_context(|| format!("failed to fetch {what} from {}", self.shown_url()))?;
        let fetched = Fetched {
            // Unknown (`None`) if the list is gone: callers then keep what they have.
            refs: remote
                .list()
                .ok()
                .map(|heads| heads.iter().map(|h| h.name().to_string()).collect()),
        };
        let _ = remote.disconnect();
        Ok(fetched)
    }

    /// A fetch from a remote that is a local path: the objects the mirror lacks are copied
    /// from the remote's store, the walk stopping at what the mirror has, so the cost follows
    /// what is new. (libgit2's local fetch first marks every tree of the mirror's tips as
    /// known: at 10,000 finished requests, the whole outbox at every fetch.)
    fn fetch_from_path(&self, path: &Path, spec: &str, prune: bool) -> anyhow::Result<Fetched> {
        let remote = Repository::open_bare(path)
            .with_context(|| format!("failed to open the remote {}", path.display()))?;
        let (src, dst) = spec
            .trim_start_matches('+')
            .split_once(':')
            .with_context(|| format!("not a refspec: {spec}"))?;
        let mapped = |name: &str, from: &str, to: &str| -> Option<String> {
            match (from.strip_suffix('*'), to.strip_suffix('*')) {
                (Some(f), Some(t)) => name.strip_prefix(f).map(|rest| format!("{t}{rest}")),
                (None, None) => (name == from).then(|| to.to_string()),
                _ => None,
            }
        };
        let mut seen = Vec::new();
        let listed: Vec<String> = match src.strip_suffix('*') {
            Some(prefix) => remote
                .references_glob(&format!("{prefix}*"))?
                .filter_map(|r| r.ok().and_then(|r| r.name().ok().map(str::to_string)))
                .collect(),
            None => vec![src.to_string()],
        };
        for name in listed {
            // Gone since it was listed (another runner dropping a claim): as if never there.
            let Ok(tip) = remote.refname_to_id(&name) else {
                continue;
            };
            let Some(local) = mapped(&name, src, dst) else {
                continue;
            };
            transport::copy_objects(&remote, &self.repo, tip)?;
            self.repo
                .reference(&local, tip, true, "fetch")
                .with_context(|| format!("failed to set {local}"))?;
            seen.push(name);
        }
        if prune {
            let pattern = dst
                .strip_suffix('*')
                .map_or(dst.to_string(), |p| format!("{p}*"));
            for r in self.repo.references_glob(&pattern)? {
                let mut r = r?;
                let gone = r
                    .name()
                    .ok()
                    .and_then(|n| mapped(n, dst, src))
                    .is_some_and(|theirs| !seen.contains(&theirs));
                if gone {
                    r.delete()?;
                }
            }
        }
        Ok(Fetched { refs: Some(seen) })
    }

    /// How deep to fetch into the local ref `local`: [`FIRST_DEPTH`] commits the first time
    /// in a shallow mirror, else everything not yet here (0).
    fn first_depth(&self, local: &str) -> i32 {
        let fresh = self.repo.refname_to_id(local).is_err();
        if self.shallow && fresh {
            FIRST_DEPTH
        } else {
            0
        }
    }

    /// Fetch `branch`; its tip, or `None` when the remote has no such branch.
    pub fn fetch(&self, branch: &str) -> anyhow::Result<Option<Oid>> {
        if self.in_place {
            return match self.repo.refname_to_id(&format!("refs/heads/{branch}")) {
                Ok(oid) => Ok(Some(oid)),
                Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("failed to read branch {branch}")),
            };
        }
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let depth = self.first_depth(&format!("refs/remotes/origin/{branch}"));
        let fetched = self.fetch_depth(&spec, branch, false, depth)?;
        // A branch deleted upstream must not leave a stale tip behind.
        if !fetched.has(&format!("refs/heads/{branch}")) {
            return Ok(None);
        }
        match self
            .repo
            .refname_to_id(&format!("refs/remotes/origin/{branch}"))
        {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e).context("failed to read the fetched tip"),
        }
    }

    /// Bring `branch`'s history to at least `depth` first-parent commits below its tip (see
    /// [`Mirror::set_shallow`]).
    pub fn deepen(&mut self, branch: &str, depth: usize) -> anyhow::Result<()> {
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        self.deepen_spec(&spec, branch, depth)
    }

    /// Bring pull request `number`'s history to at least `depth` commits below its head.
    pub fn deepen_pull(&mut self, number: u64, depth: usize) -> anyhow::Result<()> {
        let spec = format!("+refs/pull/{number}/head:refs/remotes/origin/pull/{number}");
        self.deepen_spec(&spec, &format!("pull request #{number}"), depth)
    }

    fn deepen_spec(&mut self, spec: &str, what: &str, depth: usize) -> anyhow::Result<()> {
        let depth = i32::try_from(depth).unwrap_or(i32::MAX);
        self.fetch_depth(spec, what, false, depth)?;
        // libgit2 keeps the commits it parsed with the parents the old boundary gave them
        // (none, at the cut): only a fresh handle sees the history the deepening brought.
        let path = self.repo.path().to_path_buf();
        self.repo = Repository::open_bare(&path)
            .with_context(|| format!("failed to reopen mirror {}", path.display()))?;
        Ok(())
    }

    /// Fetch pull request `number`'s head (`refs/pull/<n>/head`, as GitHub keeps it). In a
    /// shallow mirror its first fetch brings [`FIRST_DEPTH`] commits, not every commit below
    /// an old fork point; [`Mirror::fork_point`] asks for more when that is not enough.
    pub fn fetch_pull(&self, number: u64) -> anyhow::Result<Oid> {
        let local = format!("refs/remotes/origin/pull/{number}");
        let depth = self.first_depth(&local);
        self.fetch_depth(
            &format!("+refs/pull/{number}/head:{local}"),
            &format!("pull request #{number}"),
            false,
            depth,
        )?;
        self.repo
            .refname_to_id(&local)
            .with_context(|| format!("pull request #{number} has no head on {}", self.shown_url()))
    }

    /// Where `head` left `base` (their merge base). In a shallow mirror whose history does
    /// not reach it yet, fails with [`NeedsDeeper`] (`depth`: the first-parent commits this
    /// mirror holds below the deeper of the two). Found within a shallow history, it is where the two meet
    /// through the commits fetched, which for branches that did not merge each other is
    /// where they forked.
    pub fn fork_point(&self, base: Oid, head: Oid) -> anyhow::Result<Oid> {
        match self.repo.merge_base(base, head) {
            Ok(fork) => Ok(fork),
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
    pub fn changed_since_fork(&self, base: Oid, head: Oid) -> anyhow::Result<Vec<String>> {
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
    pub fn changed_by(&self, commit: Oid) -> anyhow::Result<Vec<String>> {
        let c = self.repo.find_commit(commit)?;
        let Ok(parent) = c.parent(0) else {
            return Ok(Vec::new());
        };
        self.diff_paths(Some(&parent.tree()?), &c.tree()?)
    }

    /// Paths of the files that differ between two trees (added, removed, changed in content
    /// or mode), sorted. Subtrees with the same id on both sides are not opened, so the cost
    /// follows the change, not the tree (libgit2's tree diff reads every subtree of both: at
    /// 10,000 finished requests, the whole outbox twice).
    fn diff_paths(
        &self,
        old: Option<&git2::Tree>,
        new: &git2::Tree,
    ) -> anyhow::Result<Vec<String>> {
        let mut out = BTreeSet::new();
        self.diff_into(old, Some(new), "", &mut out)?;
        Ok(out.into_iter().collect())
    }

    fn diff_into(
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
    pub fn read_file(&self, commit: Oid, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let tree = self.repo.find_commit(commit)?.tree()?;
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
    pub fn path_kind(&self, commit: Oid, path: &str) -> Option<PathKind> {
        let tree = self.repo.find_commit(commit).ok()?.tree().ok()?;
        let entry = tree.get_path(Path::new(path)).ok()?;
        Some(match entry.filemode() {
            0o100755 => PathKind::Executable,
            0o100644 => PathKind::File,
            0o120000 => PathKind::Symlink,
            _ => PathKind::Dir,
        })
    }

    /// A commit (stored, on no branch) of what merging `head` into `base` would give, as
    /// GitHub's `refs/pull/N/merge`; the paths that conflict when it cannot be made.
    pub fn trial_merge(&self, base: Oid, head: Oid) -> anyhow::Result<Result<Oid, Vec<String>>> {
        let (b, h) = (self.repo.find_commit(base)?, self.repo.find_commit(head)?);
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
            return Ok(Err(paths));
        }
        let tree = self.repo.find_tree(index.write_tree_to(&self.repo)?)?;
        let sig = git2::Signature::now("codex-runner", "codex-runner@localhost")?;
        let merged = self
            .repo
            .commit(None, &sig, &sig, "trial merge", &tree, &[&b, &h])
            .context("failed to store the trial merge")?;
        Ok(Ok(merged))
    }

    /// The object id of the tree or blob at `path` in `commit`.
    pub fn object_id(&self, commit: Oid, path: &str) -> Option<Oid> {
        let tree = self.repo.find_commit(commit).ok()?.tree().ok()?;
        tree.get_path(Path::new(path)).ok().map(|e| e.id())
    }

    /// The entries directly under `dir` (e.g. `requests/`) in `commit`, with blob contents.
    ///
    /// Blobs over `max_bytes` are returned with only their first `max_bytes + 1` bytes, enough
    /// for the size rule to reject them without holding them whole.
    pub fn list_dir(
        &self,
        commit: Oid,
        dir: &str,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<(String, EntryContent, String)>> {
        let tree = self.repo.find_commit(commit)?.tree()?;
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
    pub fn files_under(&self, commit: Oid, dir: &str) -> anyhow::Result<Vec<String>> {
        let dir = dir.trim_end_matches('/');
        let tree = self.repo.find_commit(commit)?.tree()?;
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
        tip: Oid,
        paths: &[String],
        max_walk: usize,
    ) -> anyhow::Result<HashMap<String, (Oid, usize)>> {
        let mut found = HashMap::new();
        let mut pending: HashSet<&String> = paths.iter().collect();
        let mut commit = self.repo.find_commit(tip)?;
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
                found.insert(path.clone(), (commit.id(), depth));
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

    /// Write the tree of `commit` to `dest` (a fresh directory), for a read-only mount.
    ///
    /// A walk of our own rather than a libgit2 checkout: a checkout from a bare mirror fails on
    /// any submodule (one committed into the inbox would block every later request), and a
    /// tree crafted with low-level tools may hold names a checkout must never write. Files get
    /// 0644 or 0755, symbolic links stay links (they resolve inside the container), a
    /// submodule becomes an empty directory, and `.`, `..`, `.git` or names with `/` or NUL
    /// are skipped.
    pub fn export(&self, commit: Oid, dest: &Path) -> anyhow::Result<()> {
        let tree = self.repo.find_commit(commit)?.tree_id();
        self.export_tree(tree, dest)
    }

    /// Write the tree `tree` to `dest`, as [`Mirror::export`] does for a commit's.
    pub fn export_tree(&self, tree: Oid, dest: &Path) -> anyhow::Result<()> {
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
    pub fn visible_tree(&self, commit: Oid, hidden: &[&str]) -> anyhow::Result<Oid> {
        let tree = self.repo.find_commit(commit)?.tree()?;
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
        mut changes: impl FnMut(&Mirror, Oid) -> anyhow::Result<Vec<Change>>,
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
            let commit = self.build_commit(tip, &changes, message, who)?;
            crate::crashpoint::hit("before-push");
            self.push(branch, commit, tip, riders)?;
            Ok(Published {
                commit: commit.to_string(),
                replays: 0,
                parent: tip.to_string(),
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

    fn build_commit(
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
    fn push(&self, branch: &str, commit: Oid, tip: Oid, riders: &[String]) -> anyhow::Result<()> {
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

/// Make the mirror of a remote that is a local path as `git clone --mirror` does: its object
/// files hard-linked (copied across file systems), not walked and re-packed as a fetch
/// through libgit2's local transport would, which costs every historical tree (88 s for a
/// flat repository of 10,000 finished requests). Made aside and renamed into place, so a
/// mirror that exists is complete; a sibling process that got there first wins.
fn seed_from_local(work_dir: &Path, dir: &Path, remote: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("failed to create work dir {}", work_dir.display()))?;
    let aside = work_dir.join(format!("mirror.git.new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&aside);
    let cloned = git2::build::RepoBuilder::new()
        .bare(true)
        .clone_local(git2::build::CloneLocal::Local)
        .clone(&remote.to_string_lossy(), &aside);
    match cloned {
        Ok(_) => {
            if std::fs::rename(&aside, dir).is_err() {
                let _ = std::fs::remove_dir_all(&aside);
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&aside);
            // An empty remote (nothing to clone yet) and the like: the mirror starts empty
            // and the first fetch says what is wrong.
            tracing::debug!(remote = %remote.display(), error = %e, "no local clone; the mirror starts empty");
            Ok(())
        }
    }
}

/// The directory of a remote that is a local path (`/srv/ops.git`, `file:///srv/ops.git`);
/// `None` for anything reached through a git server (https, ssh, git, `host:path`).
fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    if url.contains("://") {
        return None;
    }
    match url.split_once(':') {
        Some((before, _)) if !before.contains('/') => None,
        _ => Some(PathBuf::from(url)),
    }
}

/// The transports libgit2 does not bring without OpenSSL: https ([`https`], rustls) and ssh
/// ([`ssh`], the system's client). Registered once, before the first remote is reached.
fn transports() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = https::register().and_then(|()| ssh::register()) {
            tracing::error!(error = %e.message(), "failed to register the https and ssh transports");
        }
    });
}

/// Credentials for the remotes libgit2 reaches itself (`http://`, `git://`): the forge token
/// as `x-access-token` when the runner has one, else git's credential helper, each offered
/// once, so wrong credentials fail instead of looping. https gets the same token through
/// [`https::Auth`]; ssh uses the system client's keys and agent. Registers the transports.
fn callbacks(token: Option<&str>) -> RemoteCallbacks<'static> {
    transports();
    let mut cbs = RemoteCallbacks::new();
    let token = token.map(str::to_string);
    let mut tried_pass = false;
    cbs.credentials(move |url, username, allowed| {
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) && !tried_pass {
            tried_pass = true;
            if let Some(t) = &token {
                return git2::Cred::userpass_plaintext("x-access-token", t);
            }
            if let Ok(cfg) = git2::Config::open_default() {
                return git2::Cred::credential_helper(&cfg, url, username);
            }
        }
        Err(git2::Error::from_str(
            "no (more) credentials to offer; check the token or the remote URL",
        ))
    });
    cbs
}

/// The tip of `branch` on the remote `url`, without fetching (`git ls-remote`): cheap enough
/// to poll. `None` when the branch does not exist.
pub fn remote_tip(url: &str, branch: &str, token: Option<&str>) -> anyhow::Result<Option<Oid>> {
    let mut remote =
        git2::Remote::create_detached(url).context("failed to parse the remote URL")?;
    let _auth = https::Auth::scope(token);
    let connection = remote
        .connect_auth(git2::Direction::Fetch, Some(callbacks(token)), None)
        .context("failed to reach the remote")?;
    let wanted = format!("refs/heads/{branch}");
    let tip = connection
        .list()?
        .iter()
        .find(|h| h.name() == wanted)
        .map(|h| h.oid());
    Ok(tip)
}

/// Check that `oid` text names a commit id (for values read back from state files).
pub fn parse_oid(text: &str) -> anyhow::Result<Oid> {
    match Oid::from_str(text) {
        Ok(o) => Ok(o),
        Err(_) => bail!("`{text}` is not a commit id"),
    }
}

/// Whether a tree entry's name is safe to write as one path component.
fn safe_entry_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.eq_ignore_ascii_case(b".git")
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::claims::ClaimBody;
    use super::seed::{SeedFile, SeedRepo};
    use super::*;

    fn who() -> Identity {
        Identity {
            name: "runner".into(),
            email: "runner@localhost".into(),
        }
    }

    /// A temp dir with a bare `origin.git` (main seeded with `files`) and a mirror of it.
    fn fixture(files: &[SeedFile<'_>]) -> (tempfile::TempDir, SeedRepo, Oid, Mirror) {
        let tmp = tempfile::tempdir().unwrap();
        let origin_dir = tmp.path().join("origin.git");
        let origin = SeedRepo::init_bare(&origin_dir).unwrap();
        let base = origin
            .commit("refs/heads/main", &[], files, "seed")
            .unwrap();
        let mirror =
            Mirror::open(&tmp.path().join("work"), origin_dir.to_str().unwrap(), None).unwrap();
        (tmp, origin, base, mirror)
    }

    fn file<'a>(path: &'a str, bytes: &'a [u8]) -> SeedFile<'a> {
        SeedFile {
            path,
            bytes,
            executable: false,
        }
    }

    /// The changed paths libgit2's own tree diff finds (old and new names).
    fn libgit2_diff(m: &Mirror, old: &git2::Tree, new: &git2::Tree) -> Vec<String> {
        let diff = m
            .repo
            .diff_tree_to_tree(Some(old), Some(new), None)
            .unwrap();
        let mut out = BTreeSet::new();
        for d in diff.deltas() {
            for f in [d.old_file(), d.new_file()] {
                if let Some(p) = f.path().and_then(|p| p.to_str()) {
                    out.insert(p.to_string());
                }
            }
        }
        out.into_iter().collect()
    }

    /// A tree of `files` ((path, bytes, mode)) in `m`.
    fn tree_of<'r>(m: &'r Mirror, files: &[(&str, &[u8], i32)]) -> git2::Tree<'r> {
        let base = m
            .repo
            .find_tree(m.repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let mut b = git2::build::TreeUpdateBuilder::new();
        for (path, bytes, mode) in files {
            let blob = m.repo.blob(bytes).unwrap();
            let mode = if *mode == 0o100755 {
                git2::FileMode::BlobExecutable
            } else {
                git2::FileMode::Blob
            };
            b.upsert(*path, blob, mode);
        }
        let id = b.create_updated(&m.repo, &base).unwrap();
        m.repo.find_tree(id).unwrap()
    }

    #[test]
    fn the_tree_diff_finds_what_libgit2_finds_without_opening_equal_subtrees() {
        let (_tmp, _origin, _base, m) = fixture(&[file("README.md", b"x")]);
        let logs: Vec<(String, Vec<u8>)> = (0..300)
            .map(|i| {
                (
                    format!("logs/{:02x}/r{i}.jsonl", i % 256),
                    vec![b'l'; i % 7],
                )
            })
            .collect();
        let outbox: Vec<(&str, &[u8], i32)> = logs
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice(), 0o100644))
            .collect();
        let mut before = outbox.clone();
        before.extend([
            ("requests/old.yaml", b"kind: a\n".as_slice(), 0o100644),
            ("handlers/run.sh", b"#!/bin/sh\n", 0o100644),
            ("docs", b"a file, later a directory", 0o100644),
            ("gone/deep/x.txt", b"x", 0o100644),
        ]);
        let mut after = outbox;
        after.extend([
            ("requests/old.yaml", b"kind: b\n".as_slice(), 0o100644),
            ("requests/new.yaml", b"kind: c\n", 0o100644),
            ("handlers/run.sh", b"#!/bin/sh\n", 0o100755),
            ("docs/index.md", b"now a directory", 0o100644),
            ("logs/07/added.jsonl", b"{}", 0o100644),
        ]);
        let (old, new) = (tree_of(&m, &before), tree_of(&m, &after));
        let ours = m.diff_paths(Some(&old), &new).unwrap();
        assert_eq!(ours, libgit2_diff(&m, &old, &new));
        assert_eq!(
            ours,
            [
                "docs",
                "docs/index.md",
                "gone/deep/x.txt",
                "handlers/run.sh",
                "logs/07/added.jsonl",
                "requests/new.yaml",
                "requests/old.yaml"
            ]
        );
        assert_eq!(
            m.diff_paths(Some(&new), &new).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            redact("https://x-access-token:ghp_x@github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(redact("http://u@h:1"), "http://h:1");
        assert_eq!(redact("/srv/repo.git"), "/srv/repo.git");
    }

    #[test]
    fn publish_moves_requests_and_replays_over_a_foreign_commit() {
        let (_tmp, origin, base, mirror) = fixture(&[file(
            "requests/a.yaml",
            b"kind: echo
",
        )]);
        assert_eq!(mirror.fetch("main").unwrap(), Some(base));

        // A foreign commit lands after our fetch: our commit on `base` must not overwrite it.
        let stale = mirror
            .build_commit(
                base,
                &[Change::Write {
                    path: "logs/x".into(),
                    bytes: b"1".to_vec(),
                }],
                "stale",
                &who(),
            )
            .unwrap();
        let foreign = origin
            .commit(
                "refs/heads/main",
                &[base],
                &[file("docs/foreign.md", b"hi")],
                "foreign",
            )
            .unwrap();
        let err = mirror.push("main", stale, base, &[]).unwrap_err();
        assert!(err.downcast_ref::<PushRejected>().is_some(), "{err:#}");

        let changes = [
            Change::Write {
                path: "logs/a.jsonl".into(),
                bytes: b"{}\n".to_vec(),
            },
            Change::Move {
                from: "requests/a.yaml".into(),
                to: "processed/a.yaml".into(),
            },
        ];
        let p = mirror
            .publish("main", &changes, "codex: a succeeded", &who(), 3)
            .unwrap();
        assert_eq!(
            p.replays, 0,
            "publish fetches first, so it builds on the foreign commit"
        );
        let tip = mirror.fetch("main").unwrap().unwrap();
        assert_eq!(tip.to_string(), p.commit);
        let c = mirror.repo.find_commit(tip).unwrap();
        assert_eq!(c.parent_id(0).unwrap(), foreign);
        assert_eq!(
            origin.read_main("docs/foreign.md").unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(
            origin.read_main("processed/a.yaml").unwrap().as_deref(),
            Some(&b"kind: echo\n"[..])
        );
        assert!(origin.read_main("requests/a.yaml").unwrap().is_none());
    }

    #[test]
    fn a_local_remote_is_updated_only_from_the_value_the_pusher_saw() {
        let (_tmp, origin, base, mirror) = fixture(&[file("a", b"1")]);
        assert_eq!(mirror.fetch("main").unwrap(), Some(base));
        let ours = mirror.build_commit(base, &[], "ours", &who()).unwrap();
        let foreign = origin
            .commit("refs/heads/main", &[base], &[file("b", b"2")], "foreign")
            .unwrap();
        // Pushed as if the branch were still at `base`: refused, the foreign commit stays.
        let refused = mirror
            .push_refs(
                &[RefUpdate::swap("refs/heads/main", ours, Some(base))],
                false,
            )
            .unwrap();
        assert!(refused[0].is_err(), "{refused:?}");
        assert_eq!(origin.read_main("b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(mirror.fetch("main").unwrap(), Some(foreign));
        // Claims: the first creation wins, a second one loses; a renewal needs the seen value.
        let body = claims::ClaimBody {
            runner: "r".into(),
            host: "h".into(),
            attempt: 1,
            renewed_ms: 0,
            nonce: "1".into(),
            ..Default::default()
        };
        let r = "refs/codex/claims/main/x";
        let first = mirror.push_claim(r, None, &body, &who()).unwrap();
        assert!(first.is_ok());
        let second = ClaimBody {
            nonce: "2".into(),
            ..body.clone()
        };
        assert!(mirror
            .push_claim(r, None, &second, &who())
            .unwrap()
            .is_err());
        assert!(
            mirror
                .push_claim(r, Some(foreign), &second, &who())
                .unwrap()
                .is_err(),
            "a stale claim commit"
        );
        let renewed = mirror
            .push_claim(r, first.ok(), &second, &who())
            .unwrap()
            .expect("renewed from the claim it saw");
        let seen = mirror.fetch_claims("main").unwrap();
        assert_eq!(seen["x"].oid, renewed);
        assert_eq!(seen["x"].body.as_ref().map(|b| b.nonce.as_str()), Some("2"));
        mirror.drop_claims(&[r.to_string()]).unwrap();
        assert!(mirror.fetch_claims("main").unwrap().is_empty());
    }

    /// A path remote is fetched by copying what the mirror lacks: new commits arrive, refs
    /// gone upstream go here too (pruned claims, a deleted branch).
    #[test]
    fn a_fetch_from_a_path_copies_what_is_new_and_prunes_what_is_gone() {
        let (tmp, origin, base, mirror) = fixture(&[file("a", b"1")]);
        assert_eq!(mirror.fetch("main").unwrap(), Some(base));
        let next = origin
            .commit("refs/heads/main", &[base], &[file("b", b"2")], "next")
            .unwrap();
        assert_eq!(mirror.fetch("main").unwrap(), Some(next));
        assert_eq!(
            mirror.read_file(next, "b").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        let remote = Repository::open_bare(tmp.path().join("origin.git")).unwrap();
        for id in ["x", "y"] {
            remote
                .reference(&format!("refs/codex/claims/main/{id}"), next, true, "claim")
                .unwrap();
        }
        let seen = mirror.fetch_claims("main").unwrap();
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["x", "y"]);
        remote
            .find_reference("refs/codex/claims/main/y")
            .unwrap()
            .delete()
            .unwrap();
        let seen = mirror.fetch_claims("main").unwrap();
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["x"]);
        assert!(mirror
            .repo
            .find_reference("refs/codex/claims/main/y")
            .is_err());
        assert_eq!(
            mirror.fetch_claim("main", "y").unwrap().map(|c| c.oid),
            None
        );
        assert_eq!(
            mirror.fetch_claim("main", "x").unwrap().map(|c| c.oid),
            Some(next)
        );
        remote
            .find_reference("refs/heads/main")
            .unwrap()
            .delete()
            .unwrap();
        assert_eq!(mirror.fetch("main").unwrap(), None);
    }

    #[test]
    fn local_remotes_are_told_from_served_ones() {
        assert_eq!(
            local_path("/srv/ops.git"),
            Some(PathBuf::from("/srv/ops.git"))
        );
        assert_eq!(
            local_path("file:///srv/ops.git"),
            Some(PathBuf::from("/srv/ops.git"))
        );
        assert_eq!(local_path("../ops"), Some(PathBuf::from("../ops")));
        assert_eq!(local_path("https://example.invalid/ops.git"), None);
        assert_eq!(local_path("git@example.invalid:acme/ops.git"), None);
        assert_eq!(local_path("ssh://git@example.invalid/ops.git"), None);
    }

    #[test]
    fn introducing_commit_is_the_merge_on_first_parent() {
        let (_tmp, origin, base, mirror) = fixture(&[file("README", b"x")]);
        let pr = origin
            .commit(
                "refs/heads/pr",
                &[base],
                &[file("requests/a.yaml", b"kind: echo\n")],
                "add a",
            )
            .unwrap();
        let merge = origin.merge(base, pr, "Merge pull request #1").unwrap();
        let later = origin
            .commit(
                "refs/heads/main",
                &[merge],
                &[file("requests/b.yaml", b"kind: echo\n")],
                "add b",
            )
            .unwrap();
        let tip = mirror.fetch("main").unwrap().unwrap();
        assert_eq!(tip, later);
        let found = mirror
            .introducing_commits(
                tip,
                &["requests/a.yaml".into(), "requests/b.yaml".into()],
                1000,
            )
            .unwrap();
        assert_eq!(found["requests/a.yaml"], (merge, 1));
        assert_eq!(found["requests/b.yaml"], (later, 0));
        assert_eq!(mirror.fetch("nope").unwrap(), None);
    }

    #[test]
    fn export_survives_submodules_links_and_unsafe_names() {
        let (tmp, _origin, _c, mirror) = fixture(&[]);
        let repo = &mirror.repo;
        let blob = repo.blob(b"kind: echo\n").unwrap();
        let link = repo.blob(b"/etc/passwd").unwrap();
        let mut sub = repo.treebuilder(None).unwrap();
        sub.insert("x.sh", blob, 0o100755).unwrap();
        let sub = sub.write().unwrap();
        let mut top = repo.treebuilder(None).unwrap();
        top.insert("a.yaml", blob, 0o100644).unwrap();
        top.insert("link.yaml", link, 0o120000).unwrap();
        top.insert(
            "sub.yaml",
            Oid::from_str(&"ab".repeat(20)).unwrap(),
            0o160000,
        )
        .unwrap();
        top.insert("handlers", sub, 0o040000).unwrap();
        let tree = repo.find_tree(top.write().unwrap()).unwrap();
        let who = Signature::now("t", "t@example.invalid").unwrap();
        let c = repo
            .commit(None, &who, &who, "hostile", &tree, &[])
            .unwrap();
        let dest = tmp.path().join("hostile");
        mirror.export(c, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("a.yaml")).unwrap(), b"kind: echo\n");
        assert_eq!(
            std::fs::read_link(dest.join("link.yaml")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(dest.join("sub.yaml").is_dir());
        assert!(dest.join("handlers/x.sh").is_file());
        assert!(safe_entry_name(b"ok.yaml"));
        for bad in [&b""[..], b".", b"..", b".GIT", b"a/b", b"a\0b"] {
            assert!(!safe_entry_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_visible_tree_leaves_out_hidden_directories_and_ignores_their_changes() {
        let (_tmp, origin, base, mirror) = fixture(&[
            file("handlers/x.sh", b"#!/bin/sh\n"),
            file("logs/a.jsonl", b"{}\n"),
            file("processed/a.yaml", b"kind: echo\n"),
        ]);
        let later = origin
            .commit(
                "refs/heads/main",
                &[base],
                &[file("logs/b.jsonl", b"{}\n")],
                "a result",
            )
            .unwrap();
        mirror.fetch("main").unwrap();
        let hidden = ["logs/", "processed/"];
        let lean = mirror.visible_tree(base, &hidden).unwrap();
        assert_eq!(lean, mirror.visible_tree(later, &hidden).unwrap());
        assert_ne!(
            mirror.visible_tree(base, &[]).unwrap(),
            mirror.visible_tree(later, &[]).unwrap()
        );
        let tree = mirror.repo.find_tree(lean).unwrap();
        let names: Vec<_> = tree
            .iter()
            .filter_map(|e| e.name().ok().map(str::to_string))
            .collect();
        assert_eq!(names, ["handlers"]);
        assert_eq!(
            mirror.visible_tree(base, &["nothing-here/"]).unwrap(),
            mirror.repo.find_commit(base).unwrap().tree_id()
        );
    }

    #[test]
    fn export_writes_the_tree_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let script = SeedFile {
            path: "handlers/x.sh",
            bytes: b"#!/bin/sh\n",
            executable: true,
        };
        let (tmp, _origin, c, mirror) = fixture(&[script]);
        mirror.fetch("main").unwrap();
        let dest = tmp.path().join("co");
        mirror.export(c, &dest).unwrap();
        let mode = std::fs::metadata(dest.join("handlers/x.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            mirror.path_kind(c, "handlers/x.sh"),
            Some(PathKind::Executable)
        );
    }
}
