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
use backon::Retryable;
use octocrab::secrecy::ExposeSecret;
use octocrab::Octocrab;
use serde_json::json;

mod call;
mod checks;
mod hooks;
mod model;

use call::retryable;

pub use checks::ANNOTATIONS_PER_CALL;
pub use model::{
    Annotation, CheckState, CheckUpdate, Conclusion, Credentials, ForgeError, ForgeRepo,
    Permissions, Report,
};

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
}

/// How much life a token for git must have left: a fetch or push never starts with one
/// about to expire.
pub const TOKEN_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
