//! Git over smart HTTP: requests are handed to `git http-backend` (CGI) with token auth in
//! front. A push that changes branches sends `push` webhooks, shaped as GitHub documents them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::io::AsyncWriteExt;

use crate::http::token_of;
use crate::repos::{branches, changed, push_payload};
use crate::{hooks, lock, Shared};

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
