//! GitHub Apps: installation access tokens for an RS256 JWT signed with the app's key.
//!
//! As GitHub documents it: the JWT's `iss` is the app id, `iat` and `exp` are in seconds,
//! `exp` at most ten minutes after `iat`; the answer is `201` with the token, when it
//! expires, and what it may do.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error;
use crate::{lock, App, Shared, Token};

#[derive(Deserialize)]
struct Claims {
    iss: Value,
    iat: u64,
    exp: u64,
}

/// GitHub's answer to a JWT it cannot use.
const UNDECODABLE: &str = "A JSON web token could not be decoded";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The app whose key signed `jwt`, or GitHub's 401 message.
fn verify(apps: &[App], jwt: &str) -> Result<App, &'static str> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| UNDECODABLE)?;
    if header.alg != Algorithm::RS256 {
        return Err(UNDECODABLE);
    }
    // The issuer names the app; its key must have signed the token.
    let claimed =
        jsonwebtoken::dangerous::insecure_decode::<Claims>(jwt).map_err(|_| UNDECODABLE)?;
    let iss = match &claimed.claims.iss {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let iss = iss.ok_or("'Issuer' claim ('iss') must be an Integer")?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    for app in apps.iter().filter(|a| a.id == iss) {
        let Ok(key) = DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()) else {
            continue;
        };
        let Ok(data) = jsonwebtoken::decode::<Claims>(jwt, &key, &validation) else {
            continue;
        };
        let c = data.claims;
        let now = unix_now();
        if c.exp <= now {
            return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires");
        }
        if c.exp > c.iat + 600 || c.exp > now + 600 {
            return Err("'Expiration time' claim ('exp') is too far in the future");
        }
        if c.iat > now + 60 {
            return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued");
        }
        return Ok(app.clone());
    }
    Err(UNDECODABLE)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn new_token_value(n: u64) -> String {
    use sha2::Digest;
    let seed = format!(
        "{n}-{:?}-{}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    format!(
        "ghs_{}",
        &hex::encode(sha2::Sha256::digest(seed.as_bytes()))[..36]
    )
}

/// `POST /app/installations/{id}/access_tokens`.
pub(crate) async fn access_token(
    State(state): State<Shared>,
    Path(installation): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(jwt) = jwt else {
        return error(StatusCode::UNAUTHORIZED, UNDECODABLE);
    };
    let apps = lock(&state).apps.clone();
    let app = match verify(&apps, jwt) {
        Ok(app) => app,
        Err(message) => return error(StatusCode::UNAUTHORIZED, message),
    };
    if app.installation_id != installation {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let mut st = lock(&state);
    st.minted += 1;
    let expires = std::time::SystemTime::now() + app.token_ttl;
    let token = Token {
        value: new_token_value(st.minted),
        expires_at: Some(expires),
        installation: true,
        ..app.grants.clone()
    };
    let g = &token;
    let level = |write: bool, read: bool| match (write, read) {
        (true, _) => Some("write"),
        (false, true) => Some("read"),
        _ => None,
    };
    let mut permissions = serde_json::Map::new();
    for (name, l) in [
        ("metadata", level(false, g.pull)),
        ("contents", level(g.push, g.pull)),
        ("pull_requests", level(g.push, g.pull)),
        ("checks", level(g.checks, g.pull)),
        ("statuses", level(g.push, g.pull)),
        ("repository_hooks", level(g.admin, g.admin)),
    ] {
        if let Some(l) = l {
            permissions.insert(name.into(), json!(l));
        }
    }
    let body = json!({
        "token": token.value,
        "expires_at": rfc3339(expires),
        "permissions": permissions,
        "repository_selection": "all",
    });
    st.tokens.push(token);
    (StatusCode::CREATED, Json(body)).into_response()
}
