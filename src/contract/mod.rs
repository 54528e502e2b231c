//! The repository contract: requests, the handler index and `codex.repo.yaml`.
//!
//! PURE: nothing here does I/O. Callers hand in bytes and names; this module turns them into
//! typed values or into [`Violation`]s that name the file, line, column, rule and a hint.

pub mod handlers;
pub mod repo_config;
pub mod request;
pub mod rules;
pub mod units;
pub mod words;
pub mod yaml;
mod yaml_words;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest violation message kept, in characters.
pub const MAX_MESSAGE: usize = 500;

/// One broken rule in one file, precise enough for a person or an agent to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The path of the file in the repository (e.g. `requests/deploy-1.yaml`).
    pub file: String,
    /// 1-based line, when it can be known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, when it can be known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// A stable, kebab-case name of the rule (e.g. `unknown-kind`); owned only when read
    /// back from a run log.
    pub rule: Cow<'static, str>,
    /// What is wrong, as a lowercase fragment.
    pub message: String,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// What the rule accepts, in words (`a positive whole number of seconds, or …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the file holds there, in words (`the number -5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// Replacement text for the value at the position, where one is known (`5m`, `[linux]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl Violation {
    /// A violation with no position yet. A message longer than [`MAX_MESSAGE`] characters
    /// (it may quote hostile input) is cut.
    pub fn new(file: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        let chars = message.chars().count();
        if chars > MAX_MESSAGE {
            message = message.chars().take(MAX_MESSAGE).collect();
            message.push_str(&format!("… ({} more characters)", chars - MAX_MESSAGE));
        }
        Violation {
            file: file.into(),
            line: None,
            column: None,
            rule: Cow::Borrowed(rule),
            message,
            hint: None,
            expected: None,
            found: None,
            suggestion: None,
        }
    }

    /// The violation `explained` names, at no position yet.
    pub fn explained(file: impl Into<String>, explained: words::Explained) -> Self {
        let mut v = Violation::new(file, explained.rule, explained.message);
        v.hint = explained.hint;
        v.expected = explained.expected;
        v.found = explained.found;
        v.suggestion = explained.suggestion;
        v
    }

    /// Say what the rule accepts and what was found.
    pub fn saw(mut self, expected: impl Into<String>, found: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self.found = Some(found.into());
        self
    }

    /// Attach replacement text for the value at the position.
    pub fn suggest(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestion = Some(suggestion.into());
        self
    }

    /// Attach a 1-based position.
    pub fn at(mut self, pos: Option<(usize, usize)>) -> Self {
        if let Some((line, column)) = pos {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }

    /// Attach a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {} [{}]", self.message, self.rule)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Several violations of one file or one repository state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

/// A file (or a repository state) checked against the contract: what it says, or every way
/// it breaks the contract.
pub type Checked<T> = Result<T, Violations>;

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl From<Violation> for Violations {
    fn from(v: Violation) -> Self {
        Violations(vec![v])
    }
}

/// The closest name in `known` to `wanted`, for "did you mean" hints.
pub fn closest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(wanted, k), k))
        .filter(|(d, k)| *d <= (k.len().max(wanted.len()) / 2).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos() {
        assert_eq!(
            closest("deplyo", ["deploy", "backup", "echo"]),
            Some("deploy")
        );
        assert_eq!(closest("zzzzzz", ["deploy", "backup"]), None);
    }

    #[test]
    fn display_names_file_position_rule_and_hint() {
        let v = Violation::new("requests/a.yaml", "unknown-kind", "unknown kind `x`")
            .at(Some((3, 7)))
            .hint("known kinds: echo");
        assert_eq!(
            v.to_string(),
            "requests/a.yaml:3:7: unknown kind `x` [unknown-kind]\n  hint: known kinds: echo"
        );
    }
}
