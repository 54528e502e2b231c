//! `codex.repo.yaml`: the orchestration contract, read from the repository at the branch tip.
//!
//! Unknown keys are errors, so a typo never silently falls back to a default.

use serde::Deserialize;

use super::yaml::{self, locate};
use super::{Violation, Violations};

/// The JSON Schema of `codex.repo.yaml` (for editors; the runner checks the file itself).
pub const SCHEMA: &str = include_str!("repo.schema.json");

/// Where the contract lives in the repository.
pub const CONFIG_PATH: &str = "codex.repo.yaml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    repo: RepoFile,
    #[serde(default)]
    codex: CodexFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    purpose: String,
    strategy: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodexFile {
    deploy_trigger_path: Option<String>,
    deploy_output_path: Option<String>,
    processed_path: Option<String>,
    mainline_branch: Option<String>,
    enforce_merge_before_execution: Option<bool>,
    cleanup_after_success: Option<bool>,
    on_interrupt: Option<String>,
    max_attempts: Option<u32>,
    claim_timeout: Option<String>,
    allow_handler_changes_with_requests: Option<bool>,
    layout: Option<String>,
}

/// The only execution strategy this runner implements.
pub const STRATEGY: &str = "git-merge-execution";

/// What happens to a request whose handler was interrupted by something other than itself:
/// its runner died and its container is gone, or the host or the Docker engine went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Run it again with `CODEX_ATTEMPT` one higher (handlers are idempotent), up to
    /// `max_attempts`; then record it as interrupted.
    Rerun,
    /// Record it as `interrupted` and run it no more (a person looks at what it did).
    Record,
}

impl OnInterrupt {
    /// The name in `codex.repo.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnInterrupt::Rerun => "rerun",
            OnInterrupt::Record => "record",
        }
    }
}

/// How results are laid out in the outbox and the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `logs/<id>.jsonl`, `processed/<id>.yaml`: one directory that grows with every request.
    Flat,
    /// `logs/<shard>/<id>.jsonl`, `processed/<shard>/<id>.yaml`, where the shard is the first
    /// two hex digits of the SHA-256 of the id: 256 directories, so every tree a result
    /// commit rewrites stays small however many requests the repository has run.
    Sharded,
}

impl Layout {
    /// The name in `codex.repo.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Flat => "flat",
            Layout::Sharded => "sharded",
        }
    }

    /// The layout named `name` in `codex.repo.yaml`.
    pub fn from_name(name: &str) -> Option<Layout> {
        match name {
            "flat" => Some(Layout::Flat),
            "sharded" => Some(Layout::Sharded),
            _ => None,
        }
    }
}

/// Most attempts a repository may allow.
pub const MAX_ATTEMPTS: u32 = 10;

/// The validated contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// `repo.purpose`: a label, e.g. `infrastructure-orchestration`.
    pub purpose: String,
    /// Inbox directory with a trailing slash (`requests/`).
    pub trigger_path: String,
    /// Outbox directory for logs and status files (`logs/`).
    pub output_path: String,
    /// Where finished requests move (`processed/`).
    pub processed_path: String,
    /// The branch whose tip is the authority (`main`).
    pub mainline_branch: String,
    /// Only run what is on the mainline branch.
    pub enforce_merge: bool,
    /// Move a succeeded request out of the inbox (failed ones always move).
    pub cleanup_after_success: bool,
    /// What happens to an interrupted handler.
    pub on_interrupt: OnInterrupt,
    /// Attempts a request gets under `rerun`, the first included.
    pub max_attempts: u32,
    /// A claim not renewed for this long is taken over by another runner.
    pub claim_timeout: std::time::Duration,
    /// Run a request whose pull request also changes `handlers/` or `containers/` (by
    /// default it is rejected: handler code and the request that runs it are reviewed apart).
    pub allow_handler_changes: bool,
    /// Where results live in the outbox and the archive. A repository without the key is
    /// `flat` (what every repository had before the key existed); the template says `sharded`.
    pub layout: Layout,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            purpose: "infrastructure-orchestration".into(),
            trigger_path: "requests/".into(),
            output_path: "logs/".into(),
            processed_path: "processed/".into(),
            mainline_branch: "main".into(),
            enforce_merge: true,
            cleanup_after_success: true,
            on_interrupt: OnInterrupt::Rerun,
            max_attempts: 3,
            claim_timeout: std::time::Duration::from_secs(600),
            allow_handler_changes: false,
            layout: Layout::Flat,
        }
    }
}

impl RepoConfig {
    /// Parse and check `codex.repo.yaml`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Violations> {
        let file = CONFIG_PATH;
        let text = yaml::text(file, bytes)?;
        let raw: ConfigFile = yaml::parse(file, text)?;
        let mut c = Checks {
            text,
            errors: Vec::new(),
        };
        let d = RepoConfig::default();
        check_repo(&mut c, &raw.repo);
        let codex = raw.codex;
        let [trigger_path, output_path, processed_path] = c.directories([
            (
                "deploy_trigger_path",
                codex.deploy_trigger_path,
                &d.trigger_path,
            ),
            (
                "deploy_output_path",
                codex.deploy_output_path,
                &d.output_path,
            ),
            ("processed_path", codex.processed_path, &d.processed_path),
        ]);
        let mainline_branch = codex.mainline_branch.unwrap_or(d.mainline_branch);
        if !valid_branch(&mainline_branch) {
            c.push(
                "mainline_branch",
                Violation::new(
                    file,
                    "invalid-branch",
                    format!("codex.mainline_branch `{mainline_branch}` is not a valid branch name"),
                ),
            );
        }
        let on_interrupt = match codex.on_interrupt.as_deref() {
            None => d.on_interrupt,
            Some("rerun") => OnInterrupt::Rerun,
            Some("record") => OnInterrupt::Record,
            Some(other) => {
                c.push(
                    "on_interrupt",
                    Violation::new(
                        file,
                        "invalid-value",
                        format!("codex.on_interrupt `{other}` is neither `rerun` nor `record`"),
                    )
                    .hint("`rerun`: run an interrupted handler again with CODEX_ATTEMPT + 1; `record`: record it as interrupted"),
                );
                d.on_interrupt
            }
        };
        let max_attempts = codex.max_attempts.unwrap_or(d.max_attempts);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            c.push(
                "max_attempts",
                Violation::new(
                    file,
                    "invalid-value",
                    format!(
                        "codex.max_attempts `{max_attempts}` is not between 1 and {MAX_ATTEMPTS}"
                    ),
                ),
            );
        }
        let claim_timeout = c.claim_timeout(codex.claim_timeout.as_deref(), d.claim_timeout);
        let layout = match codex.layout.as_deref() {
            None => d.layout,
            Some(name) => Layout::from_name(name).unwrap_or_else(|| {
                c.push(
                    "layout",
                    Violation::new(
                        file,
                        "invalid-value",
                        format!("codex.layout `{name}` is neither `flat` nor `sharded`"),
                    )
                    .hint("`sharded` keeps results in 256 subdirectories (logs/ab/<id>.jsonl); `flat` keeps them side by side; `codex-runner migrate-layout` moves a repository from one to the other"),
                );
                d.layout
            }),
        };
        if !c.errors.is_empty() {
            return Err(Violations(c.errors));
        }
        Ok(RepoConfig {
            layout,
            allow_handler_changes: codex
                .allow_handler_changes_with_requests
                .unwrap_or(d.allow_handler_changes),
            claim_timeout,
            on_interrupt,
            max_attempts,
            purpose: raw.repo.purpose,
            trigger_path,
            output_path,
            processed_path,
            mainline_branch,
            enforce_merge: codex
                .enforce_merge_before_execution
                .unwrap_or(d.enforce_merge),
            cleanup_after_success: codex
                .cleanup_after_success
                .unwrap_or(d.cleanup_after_success),
        })
    }
}

/// `text` (a `codex.repo.yaml`) with `codex.layout` set to `layout`, its comments and every
/// other line kept: the key's line is rewritten where it is, or added first under `codex:`
/// (the section is added when missing). `None` when the result would not say `layout`
/// (e.g. a `codex:` written in flow style): the key is then for a person to set.
pub fn set_layout(text: &str, layout: Layout) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let section = lines.iter().position(|l| l.trim_end() == "codex:");
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match section {
        Some(start) => {
            let body = (start + 1..lines.len()).take_while(|&i| {
                let l = lines[i];
                l.trim().is_empty() || l.starts_with([' ', '\t', '#'])
            });
            let mut indent = None;
            let mut existing = None;
            for i in body {
                let l = lines[i];
                let trimmed = l.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let this = &l[..l.len() - trimmed.len()];
                indent.get_or_insert_with(|| this.to_string());
                if Some(this) == indent.as_deref() && trimmed.starts_with("layout:") {
                    existing = Some(i);
                }
            }
            let indent = indent.unwrap_or_else(|| "  ".into());
            let line = format!("{indent}layout: {}", layout.as_str());
            match existing {
                Some(i) => out[i] = line,
                None => out.insert(start + 1, line),
            }
        }
        None => {
            out.push("codex:".into());
            out.push(format!("  layout: {}", layout.as_str()));
        }
    }
    let mut new = out.join("\n");
    new.push('\n');
    let parsed = RepoConfig::parse(new.as_bytes()).ok()?;
    (parsed.layout == layout).then_some(new)
}

/// The violations found so far in `codex.repo.yaml`, and where its keys are.
struct Checks<'a> {
    text: &'a str,
    errors: Vec<Violation>,
}

impl Checks<'_> {
    /// Record `v`, placed at `codex.<key>`.
    fn push(&mut self, key: &str, v: Violation) {
        let at = locate(self.text, &["codex".into(), key.into()], false);
        self.errors.push(v.at(at));
    }

    /// The inbox, outbox and processed directories: each one top-level directory (with its
    /// `/`), and three different ones outside `handlers/` and `containers/`. A bad one is
    /// reported and replaced by its default.
    fn directories(&mut self, dirs: [(&str, Option<String>, &str); 3]) -> [String; 3] {
        let file = CONFIG_PATH;
        let named = dirs.map(|(key, value, default)| {
            let v = value.unwrap_or_else(|| default.to_string());
            let name = v.strip_suffix('/').unwrap_or(&v);
            let ok = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if ok {
                (key, format!("{name}/"))
            } else {
                self.push(
                    key,
                    Violation::new(
                        file,
                        "invalid-path",
                        format!("codex.{key} `{v}` must name one top-level directory"),
                    )
                    .hint(format!("e.g. `{key}: {default}`")),
                );
                (key, default.to_string())
            }
        });
        let reserved = ["handlers/", "containers/", ".git/"];
        for (i, (key, value)) in named.iter().enumerate() {
            let clash = named[..i].iter().any(|(_, other)| other == value)
                || reserved.contains(&value.as_str());
            if clash {
                self.push(
                    key,
                    Violation::new(file, "path-clash", format!("codex.{key} `{value}` is used for something else"))
                        .hint("inbox, outbox and processed must be three different directories outside handlers/ and containers/"),
                );
            }
        }
        named.map(|(_, value)| value)
    }

    /// `codex.claim_timeout`: a duration of at least a second.
    fn claim_timeout(
        &mut self,
        text: Option<&str>,
        default: std::time::Duration,
    ) -> std::time::Duration {
        let file = CONFIG_PATH;
        let Some(text) = text else {
            return default;
        };
        match super::units::parse_duration(text) {
            Ok(t) if t >= std::time::Duration::from_secs(1) => t,
            Ok(_) => {
                self.push(
                    "claim_timeout",
                    Violation::new(
                        file,
                        "invalid-value",
                        "codex.claim_timeout must be at least 1s",
                    ),
                );
                default
            }
            Err(e) => {
                self.push(
                    "claim_timeout",
                    Violation::new(file, "invalid-value", format!("codex.claim_timeout: {e}"))
                        .hint("e.g. `claim_timeout: 10m`"),
                );
                default
            }
        }
    }
}

/// `repo:` says what the repository is for and how it runs: a lowercase purpose, and the one
/// strategy codex-runner implements.
fn check_repo(c: &mut Checks<'_>, repo: &RepoFile) {
    let file = CONFIG_PATH;
    let at = |key: &str| locate(c.text, &["repo".into(), key.into()], false);
    let purpose_ok = !repo.purpose.is_empty()
        && repo.purpose.len() <= 64
        && repo.purpose.starts_with(|ch: char| ch.is_ascii_lowercase())
        && repo
            .purpose
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    if !purpose_ok {
        let v = Violation::new(
            file,
            "invalid-value",
            format!("repo.purpose `{}` is not a lowercase label", repo.purpose),
        )
        .at(at("purpose"))
        .hint("e.g. `purpose: infrastructure-orchestration`");
        c.errors.push(v);
    }
    if repo.strategy != STRATEGY {
        let v = Violation::new(
            file,
            "unsupported-strategy",
            format!("repo.strategy `{}` is not supported", repo.strategy),
        )
        .at(at("strategy"))
        .hint(format!("codex-runner implements `{STRATEGY}`"));
        c.errors.push(v);
    }
}

/// A conservative subset of git's branch-name rules.
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "repo:\n  purpose: infrastructure-orchestration\n  strategy: git-merge-execution\ncodex:\n  deploy_trigger_path: requests/\n  deploy_output_path: logs/\n  mainline_branch: main\n  enforce_merge_before_execution: true\n  cleanup_after_success: true\n  on_interrupt: rerun\n  max_attempts: 3\n  claim_timeout: 10m\n";

    #[test]
    fn starting_shape_parses() {
        assert_eq!(
            RepoConfig::parse(START.as_bytes()).unwrap(),
            RepoConfig::default()
        );
    }

    #[test]
    fn values_take_effect() {
        let text = "repo:\n  purpose: ops\n  strategy: git-merge-execution\ncodex:\n  deploy_trigger_path: inbox\n  deploy_output_path: out/\n  mainline_branch: trunk\n  cleanup_after_success: false\n";
        let c = RepoConfig::parse(text.as_bytes()).unwrap();
        assert_eq!(
            (c.trigger_path.as_str(), c.output_path.as_str()),
            ("inbox/", "out/")
        );
        assert_eq!(c.mainline_branch, "trunk");
        assert!(!c.cleanup_after_success);
        assert!(c.enforce_merge);
        assert_eq!(
            c.layout,
            Layout::Flat,
            "no key: the layout every older repository has"
        );
        let sharded = format!("{START}  layout: sharded\n");
        let c = RepoConfig::parse(sharded.as_bytes()).unwrap();
        assert_eq!(c.layout, Layout::Sharded);
    }

    #[test]
    fn each_field_broken_is_named() {
        let cases = [
            (
                START.replace(
                    "purpose: infrastructure-orchestration",
                    "purpose: Infra Stuff",
                ),
                "invalid-value",
                2,
            ),
            (
                START.replace("strategy: git-merge-execution", "strategy: yolo"),
                "unsupported-strategy",
                3,
            ),
            (
                START.replace(
                    "deploy_trigger_path: requests/",
                    "deploy_trigger_path: ../etc",
                ),
                "invalid-path",
                5,
            ),
            (
                START.replace("deploy_output_path: logs/", "deploy_output_path: requests/"),
                "path-clash",
                6,
            ),
            (
                START.replace("mainline_branch: main", "mainline_branch: ma..in"),
                "invalid-branch",
                7,
            ),
            (
                START.replace(
                    "enforce_merge_before_execution: true",
                    "enforce_merge_before_execution: maybe",
                ),
                "wrong-type",
                8,
            ),
            (
                START.replace("cleanup_after_success", "cleanup_after_sucess"),
                "unknown-field",
                9,
            ),
            (
                START.replace("on_interrupt: rerun", "on_interrupt: retry"),
                "invalid-value",
                10,
            ),
            (
                START.replace("max_attempts: 3", "max_attempts: 0"),
                "invalid-value",
                11,
            ),
            (
                START.replace("max_attempts: 3", "max_attempts: -1"),
                "wrong-type",
                11,
            ),
            (
                START.replace("claim_timeout: 10m", "claim_timeout: soon"),
                "invalid-value",
                12,
            ),
            (format!("{START}  layout: nested\n"), "invalid-value", 13),
        ];
        for (text, rule, line) in cases {
            let err = RepoConfig::parse(text.as_bytes()).unwrap_err();
            assert_eq!(
                (&*err.0[0].rule, err.0[0].line),
                (rule, Some(line)),
                "{err}"
            );
        }
    }

    #[test]
    fn the_layout_key_is_set_in_place_and_nothing_else_moves() {
        let added = set_layout(START, Layout::Sharded).unwrap();
        assert_eq!(
            added,
            START.replace("codex:\n", "codex:\n  layout: sharded\n")
        );
        let back = set_layout(&added, Layout::Flat).unwrap();
        assert_eq!(back, START.replace("codex:\n", "codex:\n  layout: flat\n"));
        let commented = "# top\nrepo:\n  purpose: ops\n  strategy: git-merge-execution\ncodex:\n    # four spaces here\n    max_attempts: 2\n    layout: flat # old\n";
        let set = set_layout(commented, Layout::Sharded).unwrap();
        assert!(set.contains("\n    layout: sharded\n"), "{set}");
        assert!(set.contains("# four spaces here") && set.contains("max_attempts: 2"));
        let no_section = "repo:\n  purpose: ops\n  strategy: git-merge-execution\n";
        let set = set_layout(no_section, Layout::Sharded).unwrap();
        assert_eq!(
            RepoConfig::parse(set.as_bytes()).unwrap().layout,
            Layout::Sharded
        );
        let flow =
            "repo:\n  purpose: ops\n  strategy: git-merge-execution\ncodex: {max_attempts: 2}\n";
        assert_eq!(set_layout(flow, Layout::Sharded), None);
    }

    #[test]
    fn branch_names() {
        assert!(valid_branch("main"));
        assert!(valid_branch("release/1.2"));
        assert!(!valid_branch("-x"));
        assert!(!valid_branch("a..b"));
        assert!(!valid_branch("a.lock"));
    }
}
