//! Pull requests: create, get, merge (a real merge commit), and the `pull_request` webhooks
//! GitHub sends (`opened`, `synchronize` when the head branch moves, `closed` when merged).
//! Each pull request's head is kept at `refs/pull/<n>/head`, as on GitHub.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{authorize, error, invalid, repository_json};
use crate::repos::{git, push_payload};
use crate::{hooks, lock, Shared};

/// A pull request.
#[derive(Debug, Clone)]
pub(crate) struct Pull {
    pub number: u64,
    pub id: u64,
    pub title: String,
    pub body: String,
    pub head: String,
    pub head_sha: String,
    pub base: String,
    pub merged: bool,
    pub merge_sha: Option<String>,
}

fn pull_json(base_url: &str, key: &str, repo: &Value, p: &Pull, base_sha: &str) -> Value {
    json!({
        "url": format!("{base_url}/repos/{key}/pulls/{}", p.number),
        "html_url": format!("{base_url}/{key}/pull/{}", p.number),
        "id": p.id,
        "node_id": format!("PR_sim{}", p.id),
        "number": p.number,
        "state": if p.merged { "closed" } else { "open" },
        "title": p.title,
        "body": p.body,
        "user": {"login": "agent", "id": 2, "type": "User"},
        "head": {"ref": p.head, "sha": p.head_sha, "label": format!("{}:{}", key.split('/').next().unwrap_or_default(), p.head), "repo": repo},
        "base": {"ref": p.base, "sha": base_sha, "label": format!("{}:{}", key.split('/').next().unwrap_or_default(), p.base), "repo": repo},
        "merged": p.merged,
        "merge_commit_sha": p.merge_sha,
    })
}

fn find_pull(state: &Shared, key: &str, number: u64) -> Option<Pull> {
    lock(state)
        .repos
        .get(key)
        .and_then(|r| r.pulls.iter().find(|p| p.number == number).cloned())
}

async fn tip(git_dir: &std::path::Path, branch: &str) -> Option<String> {
    let out = git(
        git_dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )
    .await;
    let sha = out.trim().to_string();
    (!sha.is_empty()).then_some(sha)
}

fn context(state: &Shared, key: &str) -> (std::path::PathBuf, String, Value) {
    let st = lock(state);
    let id = st.repos.get(key).map_or(0, |r| r.id);
    let (owner, name) = key.split_once('/').unwrap_or((key, ""));
    (
        st.root.join(format!("{key}.git")),
        st.base_url.clone(),
        repository_json(&st.base_url, id, owner, name),
    )
}

async fn event(state: &Shared, key: &str, action: &str, p: &Pull) {
    let (git_dir, base_url, repo) = context(state, key);
    let base_sha = tip(&git_dir, &p.base).await.unwrap_or_default();
    let payload = json!({
        "action": action,
        "number": p.number,
        "pull_request": pull_json(&base_url, key, &repo, p, &base_sha),
        "repository": repo,
        "sender": {"login": "agent", "id": 2, "type": "User"},
    });
    hooks::deliver(state, key, "pull_request", payload);
}

#[derive(Deserialize)]
pub(crate) struct NewPull {
    title: Option<String>,
    head: Option<String>,
    base: Option<String>,
    body: Option<String>,
}

pub(crate) async fn create(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(b): Json<NewPull>,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.push) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let (Some(title), Some(head), Some(base)) = (b.title, b.head, b.base) else {
        return invalid("title, head and base are required");
    };
    let (git_dir, base_url, repo_json) = context(&state, &key);
    let (Some(head_sha), Some(base_sha)) = (tip(&git_dir, &head).await, tip(&git_dir, &base).await)
    else {
        return invalid("head and base must be existing branches");
    };
    let pull = {
        let mut st = lock(&state);
        let id = st.next_id();
        let Some(r) = st.repos.get_mut(&key) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        let number = r.pulls.len() as u64 + 1;
        let p = Pull {
            number,
            id,
            title,
            body: b.body.unwrap_or_default(),
            head,
            head_sha: head_sha.clone(),
            base,
            merged: false,
            merge_sha: None,
        };
        r.pulls.push(p.clone());
        p
    };
    git(
        &git_dir,
        &[
            "update-ref",
            &format!("refs/pull/{}/head", pull.number),
            &head_sha,
        ],
    )
    .await;
    event(&state, &key, "opened", &pull).await;
    (
        StatusCode::CREATED,
        Json(pull_json(&base_url, &key, &repo_json, &pull, &base_sha)),
    )
        .into_response()
}

pub(crate) async fn get_pull(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |_| true) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let Some(pull) = find_pull(&state, &key, number) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let (git_dir, base_url, repo_json) = context(&state, &key);
    let base_sha = tip(&git_dir, &pull.base).await.unwrap_or_default();
    Json(pull_json(&base_url, &key, &repo_json, &pull, &base_sha)).into_response()
}

pub(crate) async fn merge(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.push) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let Some(mut pull) = find_pull(&state, &key, number) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if pull.merged {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Pull Request is not mergeable",
        );
    }
    let (git_dir, _, _) = context(&state, &key);
    let Some(base_sha) = tip(&git_dir, &pull.base).await else {
        return invalid("the base branch is gone");
    };
    let tree = git(
        &git_dir,
        &["merge-tree", "--write-tree", &base_sha, &pull.head_sha],
    )
    .await;
    let tree = tree.lines().next().unwrap_or_default().trim().to_string();
    if tree.len() != 40 {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Merge conflict");
    }
    let message = format!(
        "Merge pull request #{} from {owner}/{}\n\n{}",
        pull.number, pull.head, pull.title
    );
    let commit = git(
        &git_dir,
        &[
            "-c",
            "user.name=forge-sim",
            "-c",
            "user.email=forge-sim@localhost",
            "commit-tree",
            &tree,
            "-p",
            &base_sha,
            "-p",
            &pull.head_sha,
            "-m",
            &message,
        ],
    )
    .await;
    let commit = commit.trim().to_string();
    git(
        &git_dir,
        &[
            "update-ref",
            &format!("refs/heads/{}", pull.base),
            &commit,
            &base_sha,
        ],
    )
    .await;
    if tip(&git_dir, &pull.base).await.as_deref() != Some(commit.as_str()) {
        return error(
            StatusCode::CONFLICT,
            "Base branch was modified. Review and try the merge again.",
        );
    }
    pull.merged = true;
    pull.merge_sha = Some(commit.clone());
    if let Some(p) = lock(&state)
        .repos
        .get_mut(&key)
        .and_then(|r| r.pulls.iter_mut().find(|p| p.number == number))
    {
        *p = pull.clone();
    }
    let push = push_payload(
        &state,
        &key,
        &git_dir,
        &format!("refs/heads/{}", pull.base),
        &base_sha,
        &commit,
    )
    .await;
    hooks::deliver(&state, &key, "push", push);
    event(&state, &key, "closed", &pull).await;
    Json(json!({"sha": commit, "merged": true, "message": "Pull Request successfully merged"}))
        .into_response()
}

/// A branch moved: open pull requests with that head follow it (`synchronize`).
pub(crate) async fn head_moved(
    state: &Shared,
    key: &str,
    git_dir: &std::path::Path,
    branch: &str,
    new: &str,
) {
    let moved: Vec<Pull> = {
        let mut st = lock(state);
        let Some(r) = st.repos.get_mut(key) else {
            return;
        };
        r.pulls
            .iter_mut()
            .filter(|p| !p.merged && p.head == branch && p.head_sha != new)
            .map(|p| {
                p.head_sha = new.to_string();
                p.clone()
            })
            .collect()
    };
    for p in moved {
        git(
            git_dir,
            &["update-ref", &format!("refs/pull/{}/head", p.number), new],
        )
        .await;
        event(state, key, "synchronize", &p).await;
    }
}
