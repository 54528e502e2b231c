//! The ONLY place that talks to git (through git2).
//!
//! The runner keeps a bare mirror of the remote in its work directory. It reads trees there,
//! exports the tree of a commit for containers to mount, and publishes results by building a
//! commit on the remote tip and pushing it without force; a rejected push fetches, rebuilds the
//! same changes on the new tip and tries again with back-off, so a foreign commit is never lost.

use std::path::Path;

use anyhow::Context;
use git2::{RemoteCallbacks, Repository};

mod checkouts;
pub mod claims;
mod export;
mod fetch;
mod https;
mod publish;
mod push;
mod read;
pub mod seed;
mod ssh;
mod transport;

pub use checkouts::Checkouts;
pub use fetch::NeedsDeeper;
pub use publish::{Change, Published, PushRejected};
use push::RefUpdate;
pub use push::{Outcomes, Refusal};
pub use read::TrialMerge;

pub(crate) use fetch::{local_path, remote_tip, seed_from_local};

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

pub use crate::commit::CommitId;
use git2::Oid;

/// libgit2's id of a commit named above the wall.
fn oid(id: CommitId) -> Oid {
    // Twenty bytes always make an id.
    Oid::from_bytes(id.as_bytes()).unwrap_or(Oid::ZERO_SHA1)
}

/// The name above the wall of a commit libgit2 found.
fn id(oid: Oid) -> CommitId {
    let (mut bytes, raw) = ([0u8; 20], oid.as_bytes());
    let n = raw.len().min(20);
    bytes[..n].copy_from_slice(&raw[..n]);
    CommitId::from_bytes(bytes)
}

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

/// Who the runner's commits are by.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
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
        // A runner process killed while it fetched into the mirror leaves its ref locks.
        transport::clear_stale_locks(repo.path());
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

    /// Authenticate later fetches and pushes with `token` (a refreshed installation token).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The remote URL without credentials, for messages.
    pub fn shown_url(&self) -> String {
        redact(&self.url)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use git2::Signature;

    use super::claims::ClaimBody;
    use super::export::safe_entry_name;
    use super::seed::{SeedFile, SeedRepo};
    use super::*;
    use crate::contract::handlers::PathKind;

    fn who() -> Identity {
        Identity {
            name: "runner".into(),
            email: "runner@localhost".into(),
        }
    }

    /// A temp dir with a bare `origin.git` (main seeded with `files`) and a mirror of it.
    fn fixture(files: &[SeedFile<'_>]) -> (tempfile::TempDir, SeedRepo, CommitId, Mirror) {
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
                oid(base),
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
        let err = mirror.push("main", stale, oid(base), &[]).unwrap_err();
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
        assert_eq!(tip, p.commit);
        let c = mirror.repo.find_commit(oid(tip)).unwrap();
        assert_eq!(id(c.parent_id(0).unwrap()), foreign);
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
        let ours = mirror.build_commit(oid(base), &[], "ours", &who()).unwrap();
        let foreign = origin
            .commit("refs/heads/main", &[base], &[file("b", b"2")], "foreign")
            .unwrap();
        // Pushed as if the branch were still at `base`: refused, the foreign commit stays.
        let refused = mirror
            .push_refs(
                &[RefUpdate::swap("refs/heads/main", ours, Some(oid(base)))],
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
        assert_eq!(seen["x"].commit, renewed);
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
                .reference(
                    &format!("refs/codex/claims/main/{id}"),
                    oid(next),
                    true,
                    "claim",
                )
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
            mirror.fetch_claim("main", "y").unwrap().map(|c| c.commit),
            None
        );
        assert_eq!(
            mirror.fetch_claim("main", "x").unwrap().map(|c| c.commit),
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
        mirror.export(id(c), &dest).unwrap();
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
            mirror.repo.find_commit(oid(base)).unwrap().tree_id()
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
