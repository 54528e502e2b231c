//! What the demo and the tests ask of a forge that the runner itself never does: open and
//! merge pull requests as an agent would, and read check runs, annotations and statuses back
//! as a person looking at the pull request would. Plain REST calls with GitHub's paths, so they
//! work against the simulator or any GitHub-compatible API.

use anyhow::Context;
use serde_json::{json, Value};

/// A repository on a forge, with a token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for `owner/name` on the API at `api_url` (e.g. [`crate::ForgeSim::url`]).
    pub fn new(api_url: &str, owner: &str, name: &str, token: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: format!("{}/repos/{owner}/{name}", api_url.trim_end_matches('/')),
            token: token.to_string(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "forge-sim-client");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("failed to reach {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "{method} {path}: {status}: {text}");
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// Open a pull request from `head` into `base`; its number.
    pub async fn create_pull(&self, title: &str, head: &str, base: &str) -> anyhow::Result<u64> {
        let body = json!({"title": title, "head": head, "base": base});
        let pr = self
            .call(reqwest::Method::POST, "/pulls", Some(body))
            .await?;
        pr["number"]
            .as_u64()
            .context("the new pull request has no number")
    }

    /// Merge pull request `number`; the merge commit.
    pub async fn merge_pull(&self, number: u64) -> anyhow::Result<String> {
        let path = format!("/pulls/{number}/merge");
        let merged = self
            .call(reqwest::Method::PUT, &path, Some(json!({})))
            .await?;
        Ok(merged["sha"].as_str().unwrap_or_default().to_string())
    }

    /// The check runs on `sha`, as the API gives them.
    pub async fn check_runs(&self, sha: &str) -> anyhow::Result<Vec<Value>> {
        let path = format!("/commits/{sha}/check-runs");
        let list = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(list["check_runs"].as_array().cloned().unwrap_or_default())
    }

    /// The status and conclusion of check run `id`.
    pub async fn check_status(&self, id: u64) -> anyhow::Result<(String, Option<String>)> {
        let run = self
            .call(reqwest::Method::GET, &format!("/check-runs/{id}"), None)
            .await?;
        Ok((
            run["status"].as_str().unwrap_or_default().to_string(),
            run["conclusion"].as_str().map(str::to_string),
        ))
    }

    /// The annotations of check run `id`.
    pub async fn annotations(&self, id: u64) -> anyhow::Result<Vec<Value>> {
        let path = format!("/check-runs/{id}/annotations");
        let list = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }
}
