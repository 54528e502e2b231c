//! The ONLY place that talks to the forge API (through octocrab).
//!
//! The engine describes what a request's check run should show as a [`CheckUpdate`]; this
//! module finds or creates the run and brings it up to date. Calls go through octocrab's
//! HTTP stack and authentication, but with our own request and response types (octocrab's
//! check-run model lacks `status` and `external_id`) and our own retry policy: 5xx, 429,
//! secondary rate limits and timeouts are retried with back-off, honouring `Retry-After` and
//! `x-ratelimit-reset`; octocrab's own retry layer is not compiled in, so retries never stack.
//!
//! Credentials are a token or a GitHub App ([`Credentials`]): an App's installation token is
//! minted from the app's RS256-signed JWT and refreshed before it expires, by octocrab for API
//! calls and by [`GitHub::git_token`] for git, which asks for one with minutes to spare.
//!
//! Results show as check runs or, where those cannot be written (a plain token on github.com,
//! and the seam for Gitea/Forgejo), as commit statuses ([`Report`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use http_body_util::BodyExt;
use octocrab::secrecy::ExposeSecret;
use octocrab::Octocrab;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Annotations GitHub accepts in one check-run request.
pub const ANNOTATIONS_PER_CALL: usize = 50;

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

/// A failure that may pass: retried after `wait` (the forge's own figure) or the back-off.
#[derive(Debug)]
struct Transient {
    detail: String,
    wait: Option<Duration>,
}

/// A GitHub (github.com or Enterprise Server) repository's API.
#[derive(Clone)]
pub struct GitHub {
    // Shared, so every clone uses (and refreshes) one cached installation token.
    client: Arc<Octocrab>,
    // The app itself (JWT auth) and its installation, for App credentials.
    app: Option<(Arc<Octocrab>, u64)>,
    // The token, for token credentials.
    token: Option<String>,
    repo: ForgeRepo,
    attempts: usize,
    min_delay: Duration,
}

impl std::fmt::Debug for GitHub {
    // The client holds the credentials: show only where it points.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.repo;
        write!(f, "GitHub({} {}/{})", r.api_url, r.owner, r.name)
    }
}

impl GitHub {
    /// A client authenticated with a personal or fine-grained `token`.
    pub fn with_token(repo: ForgeRepo, token: &str) -> anyhow::Result<Self> {
        Self::new(repo, &Credentials::Token(token.to_string()))
    }

    /// A client for `repo` with `credentials`.
    pub fn new(repo: ForgeRepo, credentials: &Credentials) -> anyhow::Result<Self> {
        let builder = Octocrab::builder()
            .base_uri(repo.api_url.as_str())
            .context("failed to use the forge API URL")?;
        let (client, app, token) = match credentials {
            Credentials::Token(t) => (
                builder
                    .personal_token(t.clone())
                    .build()
                    .context("failed to build the forge client")?,
                None,
                Some(t.clone()),
            ),
            Credentials::App {
                app_id,
                key_pem,
                installation_id,
            } => {
                let key = octocrab::EncodingKey::from_rsa_pem(key_pem)
                    .context("the GitHub App key is not an RSA private key in PEM form")?;
                let app = builder
                    .app(octocrab::models::AppId(*app_id), key)
                    .build()
                    .context("failed to build the forge client")?;
                let installation = app
                    .installation(octocrab::models::InstallationId(*installation_id))
                    .context("failed to build the installation client")?;
                (installation, Some((Arc::new(app), *installation_id)), None)
            }
        };
        Ok(GitHub {
            client: Arc::new(client),
            app,
            token,
            repo,
            attempts: 6,
            min_delay: Duration::from_millis(500),
        })
    }

    /// A token for git over http(s): the token itself, or an installation token good for at
    /// least [`TOKEN_MARGIN`] more (a fresh one is minted when the cached one is older).
    pub async fn git_token(&self) -> Result<String, ForgeError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let call = "POST /app/installations/{id}/access_tokens".to_string();
        let attempt = || async {
            self.client
                .installation_token_with_buffer(TOKEN_MARGIN)
                .await
                .map(|t| t.expose_secret().to_string())
        };
        attempt
            .retry(self.backoff())
            .when(retryable)
            .notify(|e, wait| tracing::warn!(retry_in = ?wait, "minting an installation token failed: {e}"))
            .await
            .map_err(|e| match &e {
                octocrab::Error::GitHub { source, .. } if !retryable(&e) => ForgeError::Refused {
                    call,
                    status: source.status_code.as_u16(),
                    message: source.message.clone(),
                },
                _ => ForgeError::Unavailable {
                    call,
                    detail: e.to_string(),
                },
            })
    }

    /// Whether the client speaks as a GitHub App installation.
    pub fn is_app(&self) -> bool {
        self.app.is_some()
    }

    /// Change how hard calls are retried (tests use short delays).
    pub fn with_retries(mut self, attempts: usize, min_delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.min_delay = min_delay;
        self
    }

    /// The repository this client speaks for.
    pub fn repo(&self) -> &ForgeRepo {
        &self.repo
    }

    /// Make the check run of `update` show it; returns the run's id. `known` skips the lookup.
    pub async fn publish_check(
        &self,
        update: &CheckUpdate,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        let id = match known {
            Some(id) => Some(id),
            None => {
                self.find_check(&update.head_sha, &update.name, &update.external_id)
                    .await?
            }
        };
        let mut chunks = update.annotations.chunks(ANNOTATIONS_PER_CALL);
        let first = chunks.next().unwrap_or(&[]);
        let body = check_body(update, first);
        let id = match id {
            Some(id) => {
                self.call(
                    "PATCH",
                    &format!("{}/check-runs/{id}", self.base()),
                    Some(body),
                )
                .await?;
                id
            }
            None => {
                let created = self
                    .call("POST", &format!("{}/check-runs", self.base()), Some(body))
                    .await?;
                created["id"].as_u64().ok_or_else(|| ForgeError::Refused {
                    call: "POST check-runs".into(),
                    status: 200,
                    message: "the answer has no id".into(),
                })?
            }
        };
        for chunk in chunks {
            let body = json!({"output": {"title": update.title, "summary": update.summary, "annotations": chunk}});
            self.call(
                "PATCH",
                &format!("{}/check-runs/{id}", self.base()),
                Some(body),
            )
            .await?;
        }
        Ok(id)
    }

    /// The id of the run named `name` on `sha` whose external id is ours.
    pub async fn find_check(
        &self,
        sha: &str,
        name: &str,
        external_id: &str,
    ) -> Result<Option<u64>, ForgeError> {
        let path = format!(
            "{}/commits/{sha}/check-runs?check_name={}&filter=all",
            self.base(),
            encode(name)
        );
        let list = self.call("GET", &path, None).await?;
        Ok(list["check_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["name"] == name && r["external_id"].as_str().is_none_or(|e| e == external_id)
            })
            .and_then(|r| r["id"].as_u64()))
    }

    /// What the credentials may do on the repository. For a token, the repository's
    /// `permissions`; for an App, what a freshly minted installation token was granted.
    pub async fn permissions(&self) -> Result<Permissions, ForgeError> {
        let repo = self.call("GET", &self.base(), None).await?;
        if let Some((app, installation)) = &self.app {
            let path = format!("/app/installations/{installation}/access_tokens");
            let minted = self.call_with(app, "POST", &path, Some(json!({}))).await?;
            let p = &minted["permissions"];
            let level = |k: &str| p[k].as_str().unwrap_or_default();
            return Ok(Permissions {
                read: !level("contents").is_empty() || !level("metadata").is_empty(),
                push: level("contents") == "write",
                hooks: level("repository_hooks") == "write",
                checks: Some(level("checks") == "write"),
            });
        }
        let p = &repo["permissions"];
        let flag = |k: &str| p[k].as_bool().unwrap_or(false);
        Ok(Permissions {
            read: flag("pull"),
            push: flag("push"),
            hooks: flag("admin"),
            checks: None,
        })
    }

    /// Set the commit status `update.name` on `update.head_sha` to what `update` shows.
    /// Statuses have no id to update: the newest per name (context) is the one shown.
    pub async fn publish_status(&self, update: &CheckUpdate) -> Result<(), ForgeError> {
        let state = match update.state {
            CheckState::Queued | CheckState::InProgress => "pending",
            CheckState::Completed(Conclusion::Success) => "success",
            CheckState::Completed(Conclusion::Failure | Conclusion::TimedOut) => "failure",
            CheckState::Completed(Conclusion::ActionRequired | Conclusion::Cancelled) => "error",
        };
        // GitHub keeps 140 characters of description: the title, then the first annotation.
        let mut description = update.title.clone();
        if let Some(a) = update.annotations.first() {
            description.push_str(&format!(
                ": {}:{} {}",
                a.path,
                a.start_line,
                a.message.lines().next().unwrap_or_default()
            ));
        }
        let description: String = description.chars().take(140).collect();
        let mut body = json!({"state": state, "context": update.name, "description": description});
        if let Some(u) = &update.details_url {
            body["target_url"] = json!(u);
        }
        crate::secrets::mask_json(&mut body);
        self.call(
            "POST",
            &format!("{}/statuses/{}", self.base(), update.head_sha),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// The repository's webhooks as `(id, url)`.
    pub async fn hooks(&self) -> Result<Vec<(u64, String)>, ForgeError> {
        let list = self
            .call("GET", &format!("{}/hooks", self.base()), None)
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h["id"].as_u64()?, h["config"]["url"].as_str()?.to_string())))
            .collect())
    }

    /// Point a webhook at `url` for push and pull_request events signed with `secret`:
    /// the one already at that URL is updated, so registering twice leaves one hook.
    pub async fn upsert_hook(&self, url: &str, secret: &str) -> Result<u64, ForgeError> {
        let body = json!({
            "name": "web",
            "active": true,
            "events": ["push", "pull_request"],
            "config": {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"},
        });
        let existing = self.hooks().await?.into_iter().find(|(_, u)| u == url);
        let answer = match existing {
            Some((id, _)) => {
                self.call("PATCH", &format!("{}/hooks/{id}", self.base()), Some(body))
                    .await?
            }
            None => {
                self.call("POST", &format!("{}/hooks", self.base()), Some(body))
                    .await?
            }
        };
        answer["id"].as_u64().ok_or_else(|| ForgeError::Refused {
            call: "hooks".into(),
            status: 200,
            message: "the answer has no id".into(),
        })
    }

    /// Delete every webhook pointing at `url`; how many there were.
    pub async fn delete_hooks_to(&self, url: &str) -> Result<usize, ForgeError> {
        let mut n = 0;
        for (id, _) in self.hooks().await?.into_iter().filter(|(_, u)| u == url) {
            self.call("DELETE", &format!("{}/hooks/{id}", self.base()), None)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    fn base(&self) -> String {
        format!("/repos/{}/{}", self.repo.owner, self.repo.name)
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
    }

    /// One API call with the retry policy; the JSON answer.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ForgeError> {
        self.call_with(&self.client, method, path, body).await
    }

    /// [`Self::call`] through `client` (the installation's, or the app's own).
    async fn call_with(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ForgeError> {
        let name = format!("{method} {path}");
        let attempt = || async { once(client, method, path, body.as_ref()).await };
        attempt
            .retry(self.backoff())
            .when(|e: &Result<Transient, ForgeError>| e.is_ok())
            .adjust(|e, planned| match e {
                Ok(Transient { wait: Some(w), .. }) => Some(planned.map_or(*w, |p| p.max(*w))),
                _ => planned,
            })
            .notify(|e, wait| {
                if let Ok(t) = e {
                    tracing::warn!(call = %name, retry_in = ?wait, "forge call failed: {}", t.detail);
                }
            })
            .await
            .map_err(|e| match e {
                Ok(t) => ForgeError::Unavailable { call: name.clone(), detail: t.detail },
                Err(refused) => refused,
            })
    }
}

/// How much life a token for git must have left: a fetch or push never starts with one
/// about to expire.
pub const TOKEN_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// Whether a failed octocrab call may pass when tried again.
fn retryable(e: &octocrab::Error) -> bool {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            retryable_status(source.status_code.as_u16(), &source.message)
        }
        _ => true,
    }
}

/// 5xx, 429 and rate-limit 403s may pass; other answers will not.
fn retryable_status(status: u16, message: &str) -> bool {
    status >= 500 || status == 429 || (status == 403 && message.contains("rate limit"))
}

/// One attempt: `Err(Ok(_))` may pass, `Err(Err(_))` will not.
async fn once(
    client: &Octocrab,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Result<Transient, ForgeError>> {
    {
        let transient =
            |detail: String, wait: Option<Duration>| Err(Ok(Transient { detail, wait }));
        let sent = match method {
            "GET" => client._get(path).await,
            "POST" => client._post(path, body).await,
            "PATCH" => client._patch(path, body).await,
            "DELETE" => client._delete(path, body).await,
            "PUT" => client._put(path, body).await,
            other => {
                return Err(Err(ForgeError::Refused {
                    call: path.into(),
                    status: 0,
                    message: format!("unsupported method {other}"),
                }))
            }
        };
        let response = match sent {
            Ok(r) => r,
            // octocrab answers for the installation token it mints before the call.
            Err(octocrab::Error::GitHub { source, .. })
                if !retryable_status(source.status_code.as_u16(), &source.message) =>
            {
                return Err(Err(ForgeError::Refused {
                    call: format!("{method} {path} (installation token)"),
                    status: source.status_code.as_u16(),
                    message: source.message,
                }))
            }
            Err(octocrab::Error::GitHub { source, .. }) => {
                return transient(
                    format!("{} {}", source.status_code.as_u16(), source.message),
                    None,
                )
            }
            Err(e) => return transient(format!("{e}"), None),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return transient(format!("reading the answer failed: {e}"), None),
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["message"].as_str().unwrap_or_default().to_string();
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let reset = (header("x-ratelimit-remaining").as_deref() == Some("0"))
            .then(|| header("x-ratelimit-reset").and_then(|s| s.parse::<u64>().ok()))
            .flatten()
            .map(|at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Duration::from_secs(at.saturating_sub(now).min(3600))
            });
        let rate_limited = status == 429
            || (status == 403
                && (retry_after.is_some() || reset.is_some() || message.contains("rate limit")));
        if status >= 500 || rate_limited {
            return transient(format!("{status} {message}"), retry_after.or(reset));
        }
        Err(Err(ForgeError::Refused {
            call: format!("{method} {path}"),
            status,
            message,
        }))
    }
}

fn check_body(update: &CheckUpdate, annotations: &[Annotation]) -> Value {
    let mut body = json!({
        "name": update.name,
        "head_sha": update.head_sha,
        "external_id": update.external_id,
        "output": {"title": update.title, "summary": update.summary, "annotations": annotations},
    });
    if let Some(t) = &update.text {
        body["output"]["text"] = json!(t);
    }
    if let Some(u) = &update.details_url {
        body["details_url"] = json!(u);
    }
    if let Some(s) = &update.started_at {
        body["started_at"] = json!(s);
    }
    match update.state {
        CheckState::Queued => body["status"] = json!("queued"),
        CheckState::InProgress => body["status"] = json!("in_progress"),
        CheckState::Completed(c) => {
            body["status"] = json!("completed");
            body["conclusion"] = serde_json::to_value(c).unwrap_or(Value::Null);
        }
    }
    crate::secrets::mask_json(&mut body);
    body
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
