//! Where a request's results live on the branch: its log, its status file and its archived
//! request, in the repository's layout (`codex.layout`: flat or sharded).
//!
//! Pure path arithmetic: every lookup by id is one path per layout, never a listing, so it
//! costs the same at 10 or 100,000 finished requests.

use sha2::{Digest, Sha256};

use crate::contract::repo_config::{Layout, RepoConfig};
use crate::contract::request::RequestId;

/// The shard of request `id`: the first two hex digits of the SHA-256 of its bytes.
///
/// Stable (it depends on nothing but the id) and even: ids of one family (`deploy-web-1`,
/// `deploy-web-2`, …) spread over all 256 shards, which a prefix of the id itself would not.
/// A shell finds it with `printf %s ID | sha256sum | cut -c1-2`.
pub fn shard(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("{:02x}", digest[0])
}

/// The result paths of a repository, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The outbox, with a trailing slash (`logs/`).
    pub output: String,
    /// The archive, with a trailing slash (`processed/`).
    pub processed: String,
    /// How results are laid out in both.
    pub layout: Layout,
}

/// What a result file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFile {
    /// `<id>.jsonl` in the outbox.
    Log,
    /// `<id>.status.json` in the outbox.
    Status,
    /// `<id>.yaml` in the archive.
    Archived,
}

impl ResultFile {
    /// Every kind of result file.
    pub const ALL: [ResultFile; 3] = [ResultFile::Log, ResultFile::Status, ResultFile::Archived];

    fn suffix(self) -> &'static str {
        match self {
            ResultFile::Log => ".jsonl",
            ResultFile::Status => ".status.json",
            ResultFile::Archived => ".yaml",
        }
    }
}

impl Ledger {
    /// The ledger `config` describes.
    pub fn of(config: &RepoConfig) -> Ledger {
        Ledger {
            output: config.output_path.clone(),
            processed: config.processed_path.clone(),
            layout: config.layout,
        }
    }

    /// The same directories in another layout.
    pub fn with_layout(&self, layout: Layout) -> Ledger {
        Ledger {
            layout,
            ..self.clone()
        }
    }

    /// The path of `id`'s `file` in this layout.
    pub fn path(&self, file: ResultFile, id: &str) -> String {
        let dir = match file {
            ResultFile::Log | ResultFile::Status => &self.output,
            ResultFile::Archived => &self.processed,
        };
        let suffix = file.suffix();
        match self.layout {
            Layout::Flat => format!("{dir}{id}{suffix}"),
            Layout::Sharded => format!("{dir}{}/{id}{suffix}", shard(id)),
        }
    }

    /// `logs/…/<id>.jsonl`.
    pub fn log(&self, id: &str) -> String {
        self.path(ResultFile::Log, id)
    }

    /// `logs/…/<id>.status.json`.
    pub fn status(&self, id: &str) -> String {
        self.path(ResultFile::Status, id)
    }

    /// `processed/…/<id>.yaml`.
    pub fn archived(&self, id: &str) -> String {
        self.path(ResultFile::Archived, id)
    }

    /// Where to look for `id`'s `file`: this layout's path first, then the other layout's.
    ///
    /// A result written in the old layout while a repository moves to the new one (by a
    /// runner whose pass began before the move) is still found, so it never runs again.
    pub fn lookups(&self, file: ResultFile, id: &str) -> [String; 2] {
        let other = match self.layout {
            Layout::Flat => Layout::Sharded,
            Layout::Sharded => Layout::Flat,
        };
        [self.path(file, id), self.with_layout(other).path(file, id)]
    }

    /// The id and kind of the result file at `path`, in either layout; `None` for anything
    /// else (a `.gitkeep`, a README, a file in a directory that is not a shard).
    pub fn parse(&self, path: &str) -> Option<(String, ResultFile)> {
        for file in ResultFile::ALL {
            let dir = match file {
                ResultFile::Log | ResultFile::Status => &self.output,
                ResultFile::Archived => &self.processed,
            };
            let Some(rest) = path.strip_prefix(dir.as_str()) else {
                continue;
            };
            let (shard_dir, name) = match rest.split_once('/') {
                Some((s, n)) => (Some(s), n),
                None => (None, rest),
            };
            let Some(id) = name.strip_suffix(file.suffix()) else {
                continue;
            };
            // Suffixes never overlap (`.jsonl`, `.status.json`, `.yaml`), so an id with dots
            // (`db.v2`) reads back whole; a stem that is no id is some other file.
            if id.contains('/') || RequestId::parse(id).is_err() {
                continue;
            }
            match shard_dir {
                None => return Some((id.to_string(), file)),
                Some(s) if s == shard(id) => return Some((id.to_string(), file)),
                Some(_) => continue,
            }
        }
        None
    }
}

/// The moves that put the result files among `paths` where `to` says, as (from, to) pairs;
/// files already there, and files that are not results, stay.
pub fn relayout(paths: &[String], ledger: &Ledger, to: Layout) -> Vec<(String, String)> {
    let target = ledger.with_layout(to);
    paths
        .iter()
        .filter_map(|p| {
            let (id, file) = ledger.parse(p)?;
            let dest = target.path(file, &id);
            (dest != *p).then(|| (p.clone(), dest))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(layout: Layout) -> Ledger {
        Ledger {
            output: "logs/".into(),
            processed: "processed/".into(),
            layout,
        }
    }

    #[test]
    fn shards_are_stable_two_hex_digits() {
        // sha256("hello") = 2cf24dba…
        assert_eq!(shard("hello"), "2c");
        assert_eq!(shard("deploy-web"), shard("deploy-web"));
        let spread: std::collections::BTreeSet<String> = (0..2000)
            .map(|i| shard(&format!("deploy-web-{i}")))
            .collect();
        assert_eq!(
            spread.len(),
            256,
            "a family of ids spreads over every shard"
        );
    }

    #[test]
    fn paths_in_each_layout() {
        let flat = ledger(Layout::Flat);
        assert_eq!(flat.log("hello"), "logs/hello.jsonl");
        assert_eq!(flat.status("hello"), "logs/hello.status.json");
        assert_eq!(flat.archived("hello"), "processed/hello.yaml");
        let sharded = ledger(Layout::Sharded);
        assert_eq!(sharded.log("hello"), "logs/2c/hello.jsonl");
        assert_eq!(sharded.status("hello"), "logs/2c/hello.status.json");
        assert_eq!(sharded.archived("hello"), "processed/2c/hello.yaml");
        assert_eq!(
            sharded.lookups(ResultFile::Status, "hello"),
            ["logs/2c/hello.status.json", "logs/hello.status.json"]
        );
        assert_eq!(
            flat.lookups(ResultFile::Archived, "hello"),
            ["processed/hello.yaml", "processed/2c/hello.yaml"]
        );
    }

    #[test]
    fn result_files_are_recognised_in_either_layout_and_nothing_else_is() {
        let l = ledger(Layout::Sharded);
        for layout in [Layout::Flat, Layout::Sharded] {
            let other = l.with_layout(layout);
            for file in ResultFile::ALL {
                for id in ["nightly-orders", "db.v2.status"] {
                    let path = other.path(file, id);
                    assert_eq!(l.parse(&path), Some((id.into(), file)), "{path}");
                }
            }
        }
        for not_ours in [
            "logs/.gitkeep",
            "logs/README.md",
            "logs/zz/hello.jsonl",
            "logs/2c/deeper/hello.jsonl",
            "processed/hello.jsonl",
            "requests/hello.yaml",
            "logs/-x.jsonl",
        ] {
            assert_eq!(l.parse(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn a_relayout_moves_results_only_and_round_trips() {
        let flat = ledger(Layout::Flat);
        let paths: Vec<String> = [
            "logs/.gitkeep",
            "logs/a.jsonl",
            "logs/a.status.json",
            "processed/a.yaml",
            "processed/README.md",
            "logs/2c/hello.jsonl",
        ]
        .map(String::from)
        .to_vec();
        let moves = relayout(&paths, &flat, Layout::Sharded);
        let a = shard("a");
        assert_eq!(
            moves,
            [
                ("logs/a.jsonl".to_string(), format!("logs/{a}/a.jsonl")),
                (
                    "logs/a.status.json".into(),
                    format!("logs/{a}/a.status.json")
                ),
                ("processed/a.yaml".into(), format!("processed/{a}/a.yaml")),
            ],
            "hello is sharded already; .gitkeep and README stay"
        );
        let moved: Vec<String> = moves.iter().map(|(_, to)| to.clone()).collect();
        let back = relayout(&moved, &flat, Layout::Flat);
        let returned: Vec<String> = back.iter().map(|(_, to)| to.clone()).collect();
        assert_eq!(
            returned,
            ["logs/a.jsonl", "logs/a.status.json", "processed/a.yaml"]
        );
    }
}
