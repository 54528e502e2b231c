//! What every route shares: GitHub's error bodies, the caller's token, and the authorization
//! check each REST call makes first.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use crate::{lock, Shared, Token};

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()});
    (status, Json(body)).into_response()
}

pub(crate) fn invalid(message: &str) -> Response {
    let body = json!({"message": "Validation Failed", "errors": [{"message": message, "code": "custom"}], "documentation_url": "https://docs.github.com/rest", "status": "422"});
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An authorization failure, answered as GitHub would.
pub(crate) struct Denied(StatusCode, &'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The caller's token and the repository key, or the error GitHub would answer.
pub(crate) fn authorize(
    state: &Shared,
    headers: &HeaderMap,
    owner: &str,
    repo: &str,
    need: impl Fn(&Token) -> bool,
) -> Result<(Token, String), Denied> {
    let Some(token) = token_of(state, headers) else {
        return Err(Denied(StatusCode::UNAUTHORIZED, "Bad credentials"));
    };
    let key = format!("{owner}/{repo}");
    // GitHub answers 404, not 403, for a private repository the token cannot see.
    if !lock(state).repos.contains_key(&key) || !token.pull {
        return Err(Denied(StatusCode::NOT_FOUND, "Not Found"));
    }
    if !need(&token) {
        return Err(Denied(
            StatusCode::FORBIDDEN,
            if token.installation {
                "Resource not accessible by integration"
            } else {
                "Resource not accessible by personal access token"
            },
        ));
    }
    Ok((token, key))
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
