//! Building small repositories directly in a bare repo: the demo's remote, and test fixtures.

use std::path::Path;

use anyhow::Context;
use git2::build::TreeUpdateBuilder;
use git2::{FileMode, Repository, Signature};

use super::{id, oid, CommitId};

/// A file to put in a commit.
pub struct SeedFile<'a> {
    /// Repository path.
    pub path: &'a str,
    /// Content.
    pub bytes: &'a [u8],
    /// Executable bit.
    pub executable: bool,
}

impl<'a> SeedFile<'a> {
    /// Plain (not executable) text files from `(path, text)` pairs.
    pub fn texts(files: &[(&'a str, &'a str)]) -> Vec<SeedFile<'a>> {
        files
            .iter()
            .map(|(path, text)| SeedFile {
                path,
                bytes: text.as_bytes(),
                executable: false,
            })
            .collect()
    }
}

/// A bare repository to write commits into.
pub struct SeedRepo {
    repo: Repository,
}

impl SeedRepo {
    /// Create a bare repository at `dir`.
    pub fn init_bare(dir: &Path) -> anyhow::Result<Self> {
        let repo = Repository::init_bare(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        repo.set_head("refs/heads/main")
            .context("failed to point HEAD at main")?;
        Ok(SeedRepo { repo })
    }

    /// Commit `files` on top of `parents[0]` (or an empty tree), with all `parents`, and point
    /// `refname` at it.
    pub fn commit(
        &self,
        refname: &str,
        parents: &[CommitId],
        files: &[SeedFile<'_>],
        message: &str,
    ) -> anyhow::Result<CommitId> {
        let base = match parents.first() {
            Some(p) => self.repo.find_commit(oid(*p))?.tree()?,
            None => {
                let empty = self.repo.treebuilder(None)?.write()?;
                self.repo.find_tree(empty)?
            }
        };
        let mut update = TreeUpdateBuilder::new();
        for f in files {
            let blob = self.repo.blob(f.bytes)?;
            let mode = if f.executable {
                FileMode::BlobExecutable
            } else {
                FileMode::Blob
            };
            update.upsert(f.path, blob, mode);
        }
        let tree = self
            .repo
            .find_tree(update.create_updated(&self.repo, &base)?)?;
        let parent_commits = parents
            .iter()
            .map(|p| self.repo.find_commit(oid(*p)))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&git2::Commit<'_>> = parent_commits.iter().collect();
        let sig = Signature::now("Demo Agent", "agent@example.invalid")?;
        let made = self.repo.commit(None, &sig, &sig, message, &tree, &refs)?;
        self.repo.reference(refname, made, true, message)?;
        Ok(id(made))
    }

    /// A merge commit of `branch_tip` into `main_tip`, as a PR merge: the branch was made from
    /// main, so the merged tree is the branch's tree.
    pub fn merge(
        &self,
        main_tip: CommitId,
        branch_tip: CommitId,
        message: &str,
    ) -> anyhow::Result<CommitId> {
        let tree = self.repo.find_commit(oid(branch_tip))?.tree()?;
        let main = self.repo.find_commit(oid(main_tip))?;
        let branch = self.repo.find_commit(oid(branch_tip))?;
        let sig = Signature::now("Demo Reviewer", "reviewer@example.invalid")?;
        let made = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &[&main, &branch])?;
        self.repo
            .reference("refs/heads/main", made, true, message)?;
        Ok(id(made))
    }

    /// The commit `refname` points at.
    pub fn tip(&self, refname: &str) -> anyhow::Result<CommitId> {
        let found = self
            .repo
            .refname_to_id(refname)
            .with_context(|| format!("no {refname}"))?;
        Ok(id(found))
    }

    /// One line per first-parent commit of `main` (short id and subject), newest first.
    pub fn history(&self, limit: usize) -> anyhow::Result<Vec<String>> {
        let mut walk = self.repo.revwalk()?;
        walk.push_ref("refs/heads/main")?;
        walk.simplify_first_parent()?;
        let mut out = Vec::new();
        for oid in walk.take(limit) {
            let c = self.repo.find_commit(oid?)?;
            out.push(format!(
                "{} {}",
                &c.id().to_string()[..10],
                c.summary().ok().flatten().unwrap_or_default()
            ));
        }
        Ok(out)
    }

    /// Open an existing bare repository.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(SeedRepo {
            repo: Repository::open_bare(dir)
                .with_context(|| format!("failed to open {}", dir.display()))?,
        })
    }

    /// Push `refs` to `url` (no force), authenticating with `token` over http(s).
    pub fn push(&self, url: &str, refs: &[&str], token: Option<&str>) -> anyhow::Result<()> {
        let mut remote = self.repo.remote_anonymous(url)?;
        let _auth = super::https::Auth::scope(token);
        let mut opts = git2::PushOptions::new();
        opts.remote_callbacks(super::callbacks(token));
        let specs: Vec<String> = refs.iter().map(|r| format!("{r}:{r}")).collect();
        remote
            .push(&specs, Some(&mut opts))
            .with_context(|| format!("failed to push to {}", super::redact(url)))
    }

    /// Fetch `main` from `url` into this repository.
    pub fn fetch_main(&self, url: &str, token: Option<&str>) -> anyhow::Result<()> {
        let mut remote = self.repo.remote_anonymous(url)?;
        let _auth = super::https::Auth::scope(token);
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(super::callbacks(token));
        remote
            .fetch(&["+refs/heads/main:refs/heads/main"], Some(&mut opts), None)
            .with_context(|| format!("failed to fetch from {}", super::redact(url)))
    }

    /// A file's bytes at the tip of main.
    pub fn read_main(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let tree = self
            .repo
            .find_reference("refs/heads/main")?
            .peel_to_tree()?;
        match tree.get_path(Path::new(path)) {
            Ok(e) => Ok(Some(self.repo.find_blob(e.id())?.content().to_vec())),
            Err(_) => Ok(None),
        }
    }
}
