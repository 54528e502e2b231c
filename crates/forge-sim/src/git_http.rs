//! Git over smart HTTP: requests are handed to `git http-backend` (CGI) with token auth in
//! front. A push that changes branches sends `push` webhooks, shaped as GitHub documents them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::{hooks, lock, Shared, Token};

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/{owner}/{repo}/info/refs", get(serve))
        .route("/{owner}/{repo}/git-upload-pack", post(serve))
        .route("/{owner}/{repo}/git-receive-pack", post(serve))
        .with_state(state)
}

fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"forge-sim\""),
    );
    r
}

/// The token of a `Basic` (git) or `token`/`Bearer` (API) authorization header.
pub(crate) fn token_of(state: &Shared, headers: &HeaderMap) -> Option<Token> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let secret = if let Some(b) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':').map(|(_, pass)| pass.to_string())?
    } else {
        value
            .strip_prefix("token ")
            .or_else(|| value.strip_prefix("Bearer "))?
            .trim()
            .to_string()
    };
    lock(state).token(&secret)
}

async fn serve(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(name) = repo.strip_suffix(".git").map(str::to_string) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let key = format!("{owner}/{name}");
    let (root, exists, fault) = {
        let mut st = lock(&state);
        st.git_requests += 1;
        let fault = st.git_faults > 0 && st.git_requests.is_multiple_of(st.git_faults);
        if fault {
            st.git_faulted += 1;
        }
        (st.root.clone(), st.repos.contains_key(&key), fault)
    };
    if fault {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response();
    }
    let Some(token) = token_of(&state, &headers) else {
        return unauthorized();
    };
    if !exists {
        return (StatusCode::NOT_FOUND, "repository not found\n").into_response();
    }
    let query = uri.query().unwrap_or("").to_string();
    let pushing =
        uri.path().ends_with("git-receive-pack") || query.contains("service=git-receive-pack");
    if (pushing && !token.push) || !token.pull {
        return (StatusCode::FORBIDDEN, "permission denied\n").into_response();
    }
    let git_dir = root.join(&owner).join(format!("{name}.git"));
    let before = if pushing && method == Method::POST {
        branches(&git_dir).await
    } else {
        Vec::new()
    };
    let response = match cgi(&root, &uri, &method, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("git http-backend failed: {e:#}\n"),
            )
                .into_response()
        }
    };
    if pushing && method == Method::POST {
        let after = branches(&git_dir).await;
        for (refname, old, new) in changed(&before, &after) {
            let payload = push_payload(&state, &key, &git_dir, &refname, &old, &new).await;
            hooks::deliver(&state, &key, "push", payload);
            if let Some(branch) = refname.strip_prefix("refs/heads/") {
                crate::pulls::head_moved(&state, &key, &git_dir, branch, &new).await;
            }
        }
    }
    response
}

async fn cgi(
    root: &std::path::Path,
    uri: &Uri,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<Response> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        // Pushes are allowed here; the token check above decides who may.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    });
    let out = child.wait_with_output().await?;
    let _ = writer.await;
    if !out.stderr.is_empty() {
        tracing::debug!(stderr = %String::from_utf8_lossy(&out.stderr), "git http-backend");
    }
    parse_cgi(&out.stdout)
}

fn parse_cgi(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
        .ok_or_else(|| anyhow::anyhow!("no CGI header block"))?;
    let head = String::from_utf8_lossy(&raw[..split.0]);
    let mut response = Response::new(axum::body::Body::from(raw[split.1..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            *response.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(name.trim()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    Ok(response)
}

pub(crate) async fn git(git_dir: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output()
        .await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

async fn branches(git_dir: &std::path::Path) -> Vec<(String, String)> {
    git(
        git_dir,
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/heads",
        ],
    )
    .await
    .lines()
    .filter_map(|l| {
        l.split_once(' ')
            .map(|(r, o)| (r.to_string(), o.to_string()))
    })
    .collect()
}

const ZERO: &str = "0000000000000000000000000000000000000000";

fn changed(
    before: &[(String, String)],
    after: &[(String, String)],
) -> Vec<(String, String, String)> {
    let find = |list: &[(String, String)], r: &str| {
        list.iter().find(|(n, _)| n == r).map(|(_, o)| o.clone())
    };
    let mut refs: Vec<&String> = before.iter().chain(after).map(|(r, _)| r).collect();
    refs.sort();
    refs.dedup();
    refs.into_iter()
        .filter_map(|r| {
            let old = find(before, r).unwrap_or_else(|| ZERO.into());
            let new = find(after, r).unwrap_or_else(|| ZERO.into());
            (old != new).then(|| (r.clone(), old, new))
        })
        .collect()
}

/// The repository object of webhook payloads and the REST API.
pub(crate) fn repository_json(base_url: &str, id: u64, owner: &str, name: &str) -> Value {
    json!({
        "id": id,
        "node_id": format!("R_sim{id}"),
        "name": name,
        "full_name": format!("{owner}/{name}"),
        "private": true,
        "owner": {"login": owner, "id": 1, "node_id": "U_sim1", "type": "User"},
        "html_url": format!("{base_url}/{owner}/{name}"),
        "url": format!("{base_url}/repos/{owner}/{name}"),
        "clone_url": format!("{base_url}/{owner}/{name}.git"),
        "git_url": format!("{base_url}/{owner}/{name}.git"),
        "default_branch": "main",
    })
}

pub(crate) async fn push_payload(
    state: &Shared,
    key: &str,
    git_dir: &std::path::Path,
    refname: &str,
    old: &str,
    new: &str,
) -> Value {
    let (base_url, repo) = {
        let st = lock(state);
        let r = st.repos.get(key);
        (
            st.base_url.clone(),
            r.map(|r| (r.id, r.owner.clone(), r.name.clone())),
        )
    };
    let (id, owner, name) = repo.unwrap_or((0, String::new(), String::new()));
    let range = if old == ZERO {
        new.to_string()
    } else {
        format!("{old}..{new}")
    };
    let mut commits = Vec::new();
    if new != ZERO {
        let log = git(
            git_dir,
            &[
                "log",
                "--reverse",
                "--max-count=20",
                "--format=%H%x00%an%x00%ae%x00%aI%x00%s",
                &range,
            ],
        )
        .await;
        for line in log.lines() {
            let f: Vec<&str> = line.split('\0').collect();
            if f.len() < 5 {
                continue;
            }
            let files = git(
                git_dir,
                &[
                    "diff-tree",
                    "--root",
                    "--no-commit-id",
                    "--name-status",
                    "-r",
                    "-m",
                    "--first-parent",
                    f[0],
                ],
            )
            .await;
            let pick = |status: char| -> Vec<String> {
                files
                    .lines()
                    .filter(|l| l.starts_with(status))
                    .filter_map(|l| l.split('\t').nth(1))
                    .map(str::to_string)
                    .collect()
            };
            commits.push(json!({
                "id": f[0], "tree_id": "", "distinct": true, "message": f[4], "timestamp": f[3],
                "url": format!("{base_url}/{owner}/{name}/commit/{}", f[0]),
                "author": {"name": f[1], "email": f[2]}, "committer": {"name": f[1], "email": f[2]},
                "added": pick('A'), "removed": pick('D'), "modified": pick('M'),
            }));
        }
    }
    json!({
        "ref": refname,
        "before": old,
        "after": new,
        "created": old == ZERO,
        "deleted": new == ZERO,
        "forced": false,
        "base_ref": null,
        "compare": format!("{base_url}/{owner}/{name}/compare/{old}...{new}"),
        "head_commit": commits.last().cloned().unwrap_or(Value::Null),
        "commits": commits,
        "repository": repository_json(&base_url, id, &owner, &name),
        "pusher": {"name": "x-access-token", "email": null},
        "sender": {"login": "x-access-token", "id": 1, "type": "User"},
    })
}
