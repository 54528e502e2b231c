//! Fetching into the mirror: shallow first fetches, deepening only as far as a search needs,
//! pull request heads, and a path remote copied object by object instead of through a
//! transport.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::{FetchOptions, Repository};

use git2::Oid;

use super::{callbacks, https, id, transport, CommitId, Mirror, FETCHES};

/// How many first-parent commits the first fetch into an empty shallow mirror brings.
pub(super) const FIRST_DEPTH: i32 = 32;

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

/// Make the mirror of a remote that is a local path as `git clone --mirror` does: its object
/// files hard-linked (copied across file systems), not walked and re-packed as a fetch
/// through libgit2's local transport would, which costs every historical tree (88 s for a
/// flat repository of 10,000 finished requests). Made aside and renamed into place, so a
/// mirror that exists is complete; a sibling process that got there first wins.
pub(crate) fn seed_from_local(work_dir: &Path, dir: &Path, remote: &Path) -> anyhow::Result<()> {
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
pub(crate) fn local_path(url: &str) -> Option<PathBuf> {
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

/// The tip of `branch` on the remote `url`, without fetching (`git ls-remote`): cheap enough
/// to poll. `None` when the branch does not exist.
pub fn remote_tip(
    url: &str,
    branch: &str,
    token: Option<&str>,
) -> anyhow::Result<Option<CommitId>> {
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
        .map(|h| id(h.oid()));
    Ok(tip)
}

impl Mirror {
    /// The commits at which this mirror's history is cut (`shallow`, as git keeps it).
    pub(super) fn shallow_roots(&self) -> HashSet<Oid> {
        let Ok(text) = std::fs::read_to_string(self.repo.path().join("shallow")) else {
            return HashSet::new();
        };
        text.lines()
            .filter_map(|l| Oid::from_str(l.trim()).ok())
            .collect()
    }

    /// Fetch one refspec from the remote; the refs it had.
    pub(super) fn fetch_spec(&self, spec: &str, what: &str) -> anyhow::Result<Fetched> {
        self.fetch_with(spec, what, false)
    }

    /// Fetch one refspec; with `prune`, local refs under it that the remote no longer has go.
    pub(super) fn fetch_with(
        &self,
        spec: &str,
        what: &str,
        prune: bool,
    ) -> anyhow::Result<Fetched> {
        self.fetch_depth(spec, what, prune, 0)
    }

    /// Fetch one refspec (`+src:dst`, each side a ref or a prefix ending in `*`), `depth`
    /// first-parent commits deep from the tips (0: everything not yet here; a path remote
    /// always gives everything).
    pub(super) fn fetch_depth(
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
        transport::retry(self.repo.path(), self.attempts, "a fetch", || {
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
    pub(super) fn fetch_from_path(
        &self,
        path: &Path,
        spec: &str,
        prune: bool,
    ) -> anyhow::Result<Fetched> {
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
    pub(super) fn first_depth(&self, local: &str) -> i32 {
        let fresh = self.repo.refname_to_id(local).is_err();
        if self.shallow && fresh {
            FIRST_DEPTH
        } else {
            0
        }
    }

    /// Fetch `branch`; its tip, or `None` when the remote has no such branch.
    pub fn fetch(&self, branch: &str) -> anyhow::Result<Option<CommitId>> {
        if self.in_place {
            return match self.repo.refname_to_id(&format!("refs/heads/{branch}")) {
                Ok(oid) => Ok(Some(id(oid))),
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
            Ok(oid) => Ok(Some(id(oid))),
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

    pub(super) fn deepen_spec(
        &mut self,
        spec: &str,
        what: &str,
        depth: usize,
    ) -> anyhow::Result<()> {
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
    pub fn fetch_pull(&self, number: u64) -> anyhow::Result<CommitId> {
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
            .map(id)
            .with_context(|| format!("pull request #{number} has no head on {}", self.shown_url()))
    }

    /// Drop the mirror's ref of pull request `number`'s head once it is validated. Kept, one
    /// per pull request ever validated, they would make every later fetch negotiate from all
    /// of them: a cost that grows with the repository's history, not with the work.
    pub fn forget_pull(&self, number: u64) {
        let local = format!("refs/remotes/origin/pull/{number}");
        if let Ok(mut r) = self.repo.find_reference(&local) {
            if let Err(e) = r.delete() {
                tracing::warn!(pull = number, error = %e, "failed to drop the pull request's ref");
            }
        }
    }

    /// How many pull request heads the mirror keeps a ref of.
    #[cfg(test)]
    pub(crate) fn pull_refs(&self) -> usize {
        self.repo
            .references_glob("refs/remotes/origin/pull/*")
            .map_or(0, |refs| refs.count())
    }
}
