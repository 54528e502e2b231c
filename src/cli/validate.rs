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

use super::validate_out::{self, FileResult, Report};
use crate::record::{Ledger, ResultFile};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per file, violations indented as `file:line:column: message [rule]`.
    Text,
    /// JSON for programs and agents: `version`, `valid`, `contract`, `files` (README.codex.md).
    Json,
    /// GitHub workflow commands (`::error file=…,line=…::…`), and a Markdown summary to --summary.
    Github,
    /// SARIF 2.1.0, for code scanning.
    Sarif,
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
    /// Check what HEAD (or --head) adds or changes in the inbox since this commit, exactly as
    /// the runner's pull request check does: the base's codex.repo.yaml, the handlers as the
    /// merge would make them, the handler-change rule, ids already run on the base.
    #[arg(
        long,
        env = "CODEX_RUNNER_BASE",
        value_name = "REV",
        conflicts_with = "files"
    )]
    pub base: Option<String>,
    /// The commit whose requests --base checks.
    #[arg(
        long,
        env = "CODEX_RUNNER_HEAD",
        value_name = "REV",
        default_value = "HEAD",
        requires = "base"
    )]
    pub head: String,
    /// A GitHub event payload (GITHUB_EVENT_PATH): a pull request's base and head stand in
    /// for --base and --head; any other event checks the whole inbox.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["base", "files"])]
    pub event: Option<PathBuf>,
    /// Where --format github appends its Markdown summary (GitHub sets GITHUB_STEP_SUMMARY).
    #[arg(long, env = "GITHUB_STEP_SUMMARY", value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Where --format github appends `valid=`, `checked=` and `rejected=` (GitHub sets
    /// GITHUB_OUTPUT).
    #[arg(long, env = "GITHUB_OUTPUT", value_name = "FILE")]
    pub outputs: Option<PathBuf>,
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

/// Run `validate`: 0 when every file is valid, 1 otherwise, 2 when it cannot check.
pub fn run(a: ValidateArgs) -> i32 {
    let range = match (&a.base, &a.event) {
        (Some(base), _) => Some((base.clone(), a.head.clone())),
        (None, Some(event)) => match pull_request_range(event) {
            Ok(range) => range,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        },
        (None, None) => None,
    };
    let report = match &range {
        Some((base, head)) => match against_base(&a.repo, base, head) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        },
        None => working_tree(&a),
    };
    match a.format {
        Format::Text => print!("{}", validate_out::text(&report)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&validate_out::json(&report)).unwrap_or_default()
        ),
        Format::Sarif => println!(
            "{}",
            serde_json::to_string_pretty(&validate_out::sarif(&report)).unwrap_or_default()
        ),
        Format::Github => {
            print!("{}", validate_out::github(&report));
            for (path, text) in [
                (&a.summary, validate_out::summary(&report)),
                (&a.outputs, validate_out::outputs(&report)),
            ] {
                let Some(path) = path else { continue };
                if let Err(e) = append(path, &text) {
                    eprintln!("error: cannot write to {}: {e}", path.display());
                    return exit::FAILED;
                }
            }
        }
    }
    if report.valid() {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A pull request event's base and head commits; `None` for another event.
fn pull_request_range(event: &Path) -> Result<Option<(String, String)>, String> {
    let text = std::fs::read(event)
        .map_err(|e| format!("cannot read the event payload {}: {e}", event.display()))?;
    let payload: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("the event payload {} is not JSON: {e}", event.display()))?;
    let Some(pr) = payload.get("pull_request") else {
        eprintln!("not a pull request event: checking every request in the inbox");
        return Ok(None);
    };
    let sha = |side: &str| {
        pr.get(side)
            .and_then(|s| s.get("sha"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "the pull request in {} names no {side}.sha",
                    event.display()
                )
            })
    };
    Ok(Some((sha("base")?, sha("head")?)))
}

/// The requests `head` adds or changes since `base`, judged as the runner's pull request check.
fn against_base(repo: &Path, base: &str, head: &str) -> Result<Report, String> {
    let path = std::path::absolute(repo).map_err(|e| format!("{}: {e}", repo.display()))?;
    let verdict = crate::engine::validate_local(&path.display().to_string(), base, head)
        .map_err(|e| e.to_string())?;
    let mut report = Report::default();
    for (file, runs) in verdict.valid {
        report.files.push(FileResult {
            file,
            runs: Some(runs),
            violations: vec![],
        });
    }
    for v in verdict.violations {
        let is_request = v.file.ends_with(".yaml") || v.file.ends_with(".yml");
        let is_contract = v.file == INDEX_PATH || v.file == CONFIG_PATH;
        match report.files.iter_mut().find(|f| f.file == v.file) {
            Some(f) => f.violations.push(v),
            None if is_request && !is_contract && v.rule != "merge-conflict" => {
                report.files.push(FileResult {
                    file: v.file.clone(),
                    runs: None,
                    violations: vec![v],
                })
            }
            None => report.contract.push(v),
        }
    }
    report.files.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(report)
}

/// The request files of a working tree (or those named), against its own contract.
fn working_tree(a: &ValidateArgs) -> Report {
    let root = &a.repo;
    let mut report = Report::default();
    let config = match std::fs::read(root.join(CONFIG_PATH)) {
        Ok(b) => RepoConfig::parse(&b).unwrap_or_else(|v| {
            report.contract.extend(v.0);
            RepoConfig::default()
        }),
        Err(_) => RepoConfig::default(),
    };
    let index = match std::fs::read(root.join(INDEX_PATH)) {
        Ok(b) => match HandlerIndex::parse(&b) {
            Ok(i) => {
                if let Err(v) = i.check_files(|p| lookup(root, p)) {
                    report.contract.extend(v.0);
                }
                Some(i)
            }
            Err(v) => {
                report.contract.extend(v.0);
                None
            }
        },
        Err(e) => {
            report.contract.push(
                Violation::new(
                    INDEX_PATH,
                    "missing-index",
                    format!("cannot read the handler index: {e}"),
                )
                .hint("run validate in the repository's top directory, or name it with --repo"),
            );
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
    if let Some(index) = &index {
        for item in plan::plan(&entries, |_| Ok(index), done).items {
            report.files.push(match item.action {
                Action::Run(r) => FileResult {
                    file: item.file,
                    runs: Some(format!("{} on {}", r.request.kind, r.resource)),
                    violations: vec![],
                },
                Action::Reject(v) => FileResult {
                    file: item.file,
                    runs: None,
                    violations: v,
                },
            });
        }
    }
    report
}
