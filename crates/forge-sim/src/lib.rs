//! forge-sim: a GitHub-compatible forge for codex-runner's tests and demo.
//!
//! It serves the REST endpoints the runner uses with GitHub's paths, field names and status
//! codes, real git over smart HTTP (through `git http-backend`) backed by bare repositories,
//! and signed webhooks for pushes. It binds to loopback only. State lives in memory, except
//! the repositories, which are bare git repositories under the root directory.
//!
//! GitHub Apps: [`App`]s registered with [`ForgeSim::add_app`] mint installation tokens at
//! `POST /app/installations/{id}/access_tokens` for a JWT signed with the app's RSA key
//! (RS256, verified), and those tokens expire. [`ForgeSim::checks_need_app`] makes check runs
//! writable by installation tokens only, as on github.com.

mod api;
mod apps;
mod checks;
mod client;
mod git_http;
mod hooks;
mod http;
mod pulls;
mod repos;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

pub use client::Client;
pub use hooks::sign;

/// What a token may do on every repository of the forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The secret value clients send.
    pub value: String,
    /// Read repositories and clone.
    pub pull: bool,
    /// Push.
    pub push: bool,
    /// Create and update check runs.
    pub checks: bool,
    /// Manage webhooks.
    pub admin: bool,
    /// When it stops working (installation tokens); `None`: never.
    pub expires_at: Option<std::time::SystemTime>,
    /// Minted for a GitHub App installation (not a personal token).
    pub installation: bool,
}

impl Token {
    /// A token that may do everything.
    pub fn full(value: &str) -> Self {
        Token {
            value: value.into(),
            pull: true,
            push: true,
            checks: true,
            admin: true,
            expires_at: None,
            installation: false,
        }
    }

    /// A token that may only read.
    pub fn read_only(value: &str) -> Self {
        Token {
            value: value.into(),
            pull: true,
            push: false,
            checks: false,
            admin: false,
            expires_at: None,
            installation: false,
        }
    }
}

/// A GitHub App installed on every repository of the forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The app id (the JWT's `iss`).
    pub id: u64,
    /// Its public key (PEM, PKCS#1 or SPKI), which verifies the JWT.
    pub public_key_pem: String,
    /// The one installation's id.
    pub installation_id: u64,
    /// What its installation tokens may do (`value` is ignored).
    pub grants: Token,
    /// How long an installation token lives (GitHub: one hour).
    pub token_ttl: std::time::Duration,
}

/// A commit status (the older, simpler cousin of check runs).
#[derive(Debug, Clone, Serialize)]
pub struct CommitStatus {
    /// Id.
    pub id: u64,
    /// The commit.
    #[serde(skip)]
    pub sha: String,
    /// `error`, `failure`, `pending` or `success`.
    pub state: String,
    /// Its name in the UI.
    pub context: String,
    /// One line (GitHub keeps at most 140 characters).
    pub description: Option<String>,
    /// Link to the details.
    pub target_url: Option<String>,
}

/// A webhook registered on a repository.
#[derive(Debug, Clone, Serialize)]
pub struct Hook {
    /// Id.
    pub id: u64,
    /// Where deliveries go.
    pub url: String,
    /// HMAC secret (never shown by the API).
    #[serde(skip)]
    pub secret: Option<String>,
    /// Events it receives (`*` for all).
    pub events: Vec<String>,
    /// Whether deliveries are sent.
    pub active: bool,
}

/// One webhook delivery attempt, kept for tests to inspect.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The hook it went to.
    pub hook_id: u64,
    /// The response status, if the receiver answered.
    pub status: Option<u16>,
    /// The JSON body.
    pub payload: Value,
}

/// A check run.
#[derive(Debug, Clone)]
pub(crate) struct CheckRun {
    pub id: u64,
    pub name: String,
    pub head_sha: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub external_id: Option<String>,
    pub details_url: Option<String>,
    pub output: Value,
    pub annotations: Vec<Value>,
}

pub(crate) struct Repo {
    pub id: u64,
    pub owner: String,
    pub name: String,
    pub hooks: Vec<Hook>,
    pub check_runs: Vec<CheckRun>,
    pub pulls: Vec<pulls::Pull>,
    pub statuses: Vec<CommitStatus>,
}

/// Deterministic failures for API calls (git traffic is never faulted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Fail every n-th API call (0: never).
    pub every: u64,
    /// Statuses to answer in turn: 500, 502, 429 (with `Retry-After: 1`), or 0 for a 3 s delay.
    pub answers: Vec<u16>,
}

pub(crate) struct State {
    pub root: PathBuf,
    pub faults: Faults,
    pub api_calls: u64,
    pub faulted: u64,
    /// Answer every n-th git request with 503 before git sees it (0: never).
    pub git_faults: u64,
    pub git_requests: u64,
    pub git_faulted: u64,
    pub base_url: String,
    pub tokens: Vec<Token>,
    pub apps: Vec<App>,
    pub minted: u64,
    pub checks_need_app: bool,
    pub repos: BTreeMap<String, Repo>,
    pub next_id: u64,
    pub deliveries: Vec<Delivery>,
}

impl State {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The token with this value, unless it expired.
    pub fn token(&self, value: &str) -> Option<Token> {
        let now = std::time::SystemTime::now();
        self.tokens
            .iter()
            .find(|t| t.value == value && t.expires_at.is_none_or(|e| e > now))
            .cloned()
    }
}

pub(crate) type Shared = Arc<Mutex<State>>;

pub(crate) fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running forge.
pub struct ForgeSim {
    state: Shared,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ForgeSim {
    /// Serve on `127.0.0.1:port` (0 picks a free port), keeping repositories under `root`.
    pub async fn start(root: &Path, port: u16, tokens: Vec<Token>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .context("failed to bind the forge to loopback")?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(State {
            root: root.to_path_buf(),
            faults: Faults::default(),
            api_calls: 0,
            git_faults: 0,
            git_requests: 0,
            git_faulted: 0,
            faulted: 0,
            base_url: format!("http://{addr}"),
            tokens,
            apps: Vec::new(),
            minted: 0,
            checks_need_app: false,
            repos: BTreeMap::new(),
            next_id: 1000,
            deliveries: Vec::new(),
        }));
        let app = api::router(state.clone()).merge(git_http::router(state.clone()));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "forge-sim server stopped");
            }
        });
        Ok(ForgeSim {
            state,
            addr,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`: the API base URL and the git host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The clone URL of `owner/name`, with `token` as the password if given.
    pub fn git_url(&self, owner: &str, name: &str, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("http://x-access-token:{t}@{}/{owner}/{name}.git", self.addr),
            None => format!("{}/{owner}/{name}.git", self.url()),
        }
    }

    /// Create an empty repository whose default branch is `main`.
    pub fn create_repo(&self, owner: &str, name: &str) -> anyhow::Result<PathBuf> {
        create_repo(&self.state, owner, name)
    }

    /// The bare repository of `owner/name` on disk.
    pub fn repo_path(&self, owner: &str, name: &str) -> PathBuf {
        lock(&self.state)
            .root
            .join(owner)
            .join(format!("{name}.git"))
    }

    /// Start failing API calls as `faults` says.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Answer every `every`-th git smart-HTTP request with `503 Service Unavailable`, before
    /// `git http-backend` sees it (0: never), as an overloaded git server does.
    pub fn set_git_faults(&self, every: u64) {
        lock(&self.state).git_faults = every;
    }

    /// `(git requests seen, requests answered with a 503)`.
    pub fn git_stats(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.git_requests, st.git_faulted)
    }

    /// `(API calls seen, calls answered with a fault)`.
    pub fn api_stats(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.api_calls, st.faulted)
    }

    /// Register a GitHub App installed on every repository.
    pub fn add_app(&self, app: App) {
        lock(&self.state).apps.push(app);
    }

    /// Installation tokens minted so far.
    pub fn minted_tokens(&self) -> u64 {
        lock(&self.state).minted
    }

    /// As on github.com: only GitHub App installation tokens may write check runs.
    pub fn checks_need_app(&self, yes: bool) {
        lock(&self.state).checks_need_app = yes;
    }

    /// The commit statuses of `sha` on `owner/name`, oldest first.
    pub fn statuses(&self, owner: &str, name: &str, sha: &str) -> Vec<CommitStatus> {
        lock(&self.state)
            .repos
            .get(&format!("{owner}/{name}"))
            .map(|r| {
                r.statuses
                    .iter()
                    .filter(|s| s.sha == sha)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every webhook delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state).deliveries.clone()
    }

    /// Stop serving.
    pub fn stop(self) {
        self.server.abort();
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.ends_with(".git")
}

pub(crate) fn create_repo(state: &Shared, owner: &str, name: &str) -> anyhow::Result<PathBuf> {
    if !valid_name(owner) || !valid_name(name) {
        bail!("`{owner}/{name}` is not a repository name");
    }
    let mut st = lock(state);
    let key = format!("{owner}/{name}");
    if st.repos.contains_key(&key) {
        bail!("repository {key} exists");
    }
    let path = st.root.join(owner).join(format!("{name}.git"));
    let out = std::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(&path)
        .output()
        .context("failed to run git init")?;
    if !out.status.success() {
        bail!("git init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let id = st.next_id();
    st.repos.insert(
        key,
        Repo {
            id,
            owner: owner.into(),
            name: name.into(),
            hooks: Vec::new(),
            check_runs: Vec::new(),
            pulls: Vec::new(),
            statuses: Vec::new(),
        },
    );
    Ok(path)
}

/// A fresh RSA key pair for a GitHub App, made with the `openssl` command: the private key
/// (PKCS#1 PEM, as GitHub hands it out) is written to `dir/app-key.pem`; the public key
/// (PEM) is returned for [`App::public_key_pem`].
pub fn app_keypair(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let key = dir.join("app-key.pem");
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .context("failed to run openssl (Debian package `openssl`)")?;
    if !made.status.success() {
        bail!(
            "openssl genrsa failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .context("failed to run openssl")?;
    if !public.status.success() {
        bail!(
            "openssl rsa failed: {}",
            String::from_utf8_lossy(&public.stderr)
        );
    }
    Ok((key, String::from_utf8(public.stdout)?))
}
