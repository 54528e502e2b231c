//! `codex-runner validate`: check request files in a working tree against the contract,
//! exactly as a pass would, without running anything.

use crate::exit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::contract::handlers::{HandlerIndex, PathKind, INDEX_PATH};
use crate::contract::repo_config::{RepoConfig, CONFIG_PATH};
use crate::contract::request::RequestId;
use crate::contract::yaml::MAX_FILE_BYTES;
use crate::contract::Violation;
use crate::plan::{self, Action, Done, EntryContent, InboxEntry};
use crate::record::{Ledger, ResultFile};

/// Output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One line per file, violations indented.
    Text,
    /// A JSON array.
    Json,
}

/// Arguments of `validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Repository working tree (for codex.repo.yaml and handlers/index.yml).
    #[arg(long = "repo", env = "CODEX_RUNNER_REPO", default_value = ".")]
    pub repo: PathBuf,
    /// Output format.
    #[arg(long, env = "CODEX_RUNNER_FORMAT", value_enum, default_value = "text")]
    pub format: Format,
    /// Request files (default: everything in the inbox).
    pub files: Vec<PathBuf>,
}

fn lookup(root: &Path, rel: &str) -> Option<PathKind> {
    let meta = std::fs::symlink_metadata(root.join(rel)).ok()?;
    Some(if meta.file_type().is_symlink() {
        PathKind::Symlink
    } else if meta.is_dir() {
        PathKind::Dir
    } else if meta.permissions().mode() & 0o111 != 0 {
        PathKind::Executable
    } else {
        PathKind::File
    })
}

fn read_entry(root: &Path, path: &Path, order: usize) -> InboxEntry {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .trim_start_matches("./")
        .to_string();
    let content = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => EntryContent::Symlink,
        Ok(m) if m.is_dir() => EntryContent::Dir,
        _ => {
            let mut bytes = Vec::new();
            if let Ok(f) = std::fs::File::open(path) {
                use std::io::Read;
                let _ = f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes);
            }
            EntryContent::Blob(bytes)
        }
    };
    InboxEntry {
        path: rel,
        content,
        object: format!("{order:012}"),
        // Files in the working tree were brought by no commit yet.
        commit: crate::commit::CommitId::NONE,
        order,
        // The working tree has no pull request to compare with; the forge check has.
        code_changes: Vec::new(),
    }
}

/// Run `validate`: 0 when every file is valid, 1 otherwise.
pub fn run(a: ValidateArgs) -> i32 {
    let root = &a.repo;
    let mut contract_errors: Vec<Violation> = Vec::new();
    let config = match std::fs::read(root.join(CONFIG_PATH)) {
        Ok(b) => RepoConfig::parse(&b).unwrap_or_else(|v| {
            contract_errors.extend(v.0);
            RepoConfig::default()
        }),
        Err(_) => RepoConfig::default(),
    };
    let index = match std::fs::read(root.join(INDEX_PATH)) {
        Ok(b) => match HandlerIndex::parse(&b) {
            Ok(i) => {
                if let Err(v) = i.check_files(|p| lookup(root, p)) {
                    contract_errors.extend(v.0);
                }
                Some(i)
            }
            Err(v) => {
                contract_errors.extend(v.0);
                None
            }
        },
        Err(e) => {
            contract_errors.push(Violation::new(
                INDEX_PATH,
                "missing-index",
                format!("cannot read the handler index: {e}"),
            ));
            None
        }
    };
    let files: Vec<PathBuf> = if a.files.is_empty() {
        let inbox = root.join(&config.trigger_path);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&inbox)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    } else {
        a.files.clone()
    };
    let entries: Vec<InboxEntry> = files
        .iter()
        .enumerate()
        .map(|(i, f)| read_entry(root, f, i))
        .collect();
    let ledger = Ledger::of(&config);
    let done = |id: &RequestId| {
        let archived = ledger.lookups(ResultFile::Archived, id.as_str());
        if archived.iter().any(|p| root.join(p).exists()) {
            Done::Processed
        } else {
            Done::No
        }
    };
    let mut results: Vec<(String, Option<String>, Vec<Violation>)> = Vec::new();
    if let Some(index) = &index {
        for item in plan::plan(&entries, |_| Ok(index), done).items {
            match item.action {
                Action::Run(r) => results.push((
                    item.file,
                    Some(format!("{} on {}", r.request.kind, r.resource)),
                    vec![],
                )),
                Action::Reject(v) => results.push((item.file, None, v)),
            }
        }
    }
    let invalid = !contract_errors.is_empty() || results.iter().any(|(_, _, v)| !v.is_empty());
    match a.format {
        Format::Json => {
            let files: Vec<_> = results
                .iter()
                .map(|(f, ok, v)| serde_json::json!({"file": f, "valid": v.is_empty(), "runs": ok, "violations": v}))
                .collect();
            let out =
                serde_json::json!({"valid": !invalid, "contract": contract_errors, "files": files});
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Text => {
            for v in &contract_errors {
                println!("{v}");
            }
            for (file, ok, violations) in &results {
                match ok {
                    Some(what) => println!("ok   {file} ({what})"),
                    None => {
                        println!("FAIL {file}");
                        for v in violations {
                            println!("  {}", v.to_string().replace('\n', "\n  "));
                        }
                    }
                }
            }
            if results.is_empty() && contract_errors.is_empty() {
                println!("no request files found");
            }
        }
    }
    if invalid {
        exit::FAILED
    } else {
        exit::OK
    }
}
