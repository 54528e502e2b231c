//! What crosses the forge wall: the repository, the credentials, what a check run should
//! show ([`CheckUpdate`]), and the failures a caller acts on ([`ForgeError`]).

use serde::{Deserialize, Serialize};

/// Which repository on which forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeRepo {
    /// API base URL (`https://api.github.com`, or a GitHub Enterprise / test URL).
    pub api_url: String,
    /// Owner (user or organisation).
    pub owner: String,
    /// Repository name.
    pub name: String,
}

/// How the runner proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// A personal or fine-grained token.
    Token(String),
    /// A GitHub App installation: tokens are minted from the app's private key.
    App {
        /// The app id.
        app_id: u64,
        /// The app's private key (PEM).
        key_pem: Vec<u8>,
        /// The installation on the repository's owner.
        installation_id: u64,
    },
}

impl std::fmt::Debug for Credentials {
    // Never the token or the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => write!(f, "Credentials::Token(..)"),
            Credentials::App {
                app_id,
                installation_id,
                ..
            } => write!(
                f,
                "Credentials::App(app {app_id}, installation {installation_id})"
            ),
        }
    }
}

/// How results show in the forge's UI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Report {
    /// Check runs, with annotations and output (needs `checks: write`; on github.com, an App).
    #[default]
    CheckRuns,
    /// Commit statuses: a state, one line and a link per request (any token that can push).
    Statuses,
}

impl Report {
    /// The name used in the host config.
    pub fn as_str(self) -> &'static str {
        match self {
            Report::CheckRuns => "check-runs",
            Report::Statuses => "statuses",
        }
    }
}

/// What the credentials may do on the repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Read the repository and fetch.
    pub read: bool,
    /// Push.
    pub push: bool,
    /// Manage webhooks.
    pub hooks: bool,
    /// Write check runs, when the forge says (App installations); `None`: only a try tells.
    pub checks: Option<bool>,
}

/// The final conclusion of a check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    /// The request succeeded.
    Success,
    /// The handler failed.
    Failure,
    /// The handler timed out.
    TimedOut,
    /// The request was rejected: someone has to fix it.
    ActionRequired,
    /// The run was cancelled.
    Cancelled,
}

/// Where a check run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "conclusion")]
pub enum CheckState {
    /// Found, waiting to run.
    Queued,
    /// Its container started.
    InProgress,
    /// Finished.
    Completed(Conclusion),
}

/// A line-level remark shown in the pull request's diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    /// File path in the repository.
    pub path: String,
    /// First line (1-based).
    pub start_line: usize,
    /// Last line.
    pub end_line: usize,
    /// `failure`, `warning` or `notice`.
    pub annotation_level: String,
    /// What is wrong.
    pub message: String,
    /// Short title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// What one check run should show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckUpdate {
    /// Check name (`codex-runner/<id>`).
    pub name: String,
    /// The commit it is attached to.
    pub head_sha: String,
    /// Our key for the run (the request id), so a retried create finds it.
    pub external_id: String,
    /// Status and conclusion.
    pub state: CheckState,
    /// When the container started (RFC 3339).
    pub started_at: Option<String>,
    /// Output title.
    pub title: String,
    /// Output summary (Markdown).
    pub summary: String,
    /// Output text (Markdown), e.g. the last lines of the log.
    pub text: Option<String>,
    /// Link to the details (the log on the branch).
    pub details_url: Option<String>,
    /// Line remarks; sent 50 per call.
    pub annotations: Vec<Annotation>,
}

/// A forge call that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge refused the call (4xx other than rate limits): retrying will not help.
    #[error("the forge refused {call}: {status} {message}")]
    Refused {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// The forge did not answer well after every retry.
    #[error("the forge did not answer {call}: {detail}")]
    Unavailable {
        /// Method and path.
        call: String,
        /// The last failure.
        detail: String,
    },
}
