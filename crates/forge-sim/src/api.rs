//! The REST API, with GitHub's paths, field names, status codes and error bodies.
//!
//! Only what codex-runner uses: the repository, webhooks, and check runs. `/_sim/*` routes
//! are the forge's own (creating repositories) and are not part of GitHub's API.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::checks::{
    create_check, create_status, get_check, list_annotations, list_checks, list_statuses,
    update_check,
};
use crate::http::{authorize, error, invalid, now, repository_json, token_of};
use crate::{hooks, lock, Hook, Shared};

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/repos/{owner}/{repo}", get(get_repo))
        .route(
            "/repos/{owner}/{repo}/hooks",
            get(list_hooks).post(create_hook),
        )
        .route(
            "/repos/{owner}/{repo}/hooks/{id}",
            get(get_hook).patch(update_hook).delete(delete_hook),
        )
        .route("/repos/{owner}/{repo}/hooks/{id}/pings", post(ping_hook))
        .route("/repos/{owner}/{repo}/check-runs", post(create_check))
        .route(
            "/repos/{owner}/{repo}/check-runs/{id}",
            get(get_check).patch(update_check),
        )
        .route(
            "/repos/{owner}/{repo}/commits/{reference}/check-runs",
            get(list_checks),
        )
        .route(
            "/repos/{owner}/{repo}/check-runs/{id}/annotations",
            get(list_annotations),
        )
        .route("/repos/{owner}/{repo}/pulls", post(crate::pulls::create))
        .route(
            "/repos/{owner}/{repo}/pulls/{number}",
            get(crate::pulls::get_pull),
        )
        .route(
            "/repos/{owner}/{repo}/pulls/{number}/merge",
            axum::routing::put(crate::pulls::merge),
        )
        .route("/repos/{owner}/{repo}/statuses/{sha}", post(create_status))
        .route(
            "/repos/{owner}/{repo}/commits/{reference}/statuses",
            get(list_statuses),
        )
        .route(
            "/app/installations/{id}/access_tokens",
            post(crate::apps::access_token),
        )
        .route("/_sim/repos", post(sim_create_repo))
        .layer(axum::middleware::from_fn_with_state(state.clone(), faults))
        .with_state(state)
}

/// Answer some API calls with a fault instead, as configured.
async fn faults(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let answer = {
        let mut st = lock(&state);
        st.api_calls += 1;
        let f = &st.faults;
        if f.every > 0 && !f.answers.is_empty() && st.api_calls.is_multiple_of(f.every) {
            let a = f.answers[(st.faulted as usize) % f.answers.len()];
            st.faulted += 1;
            Some(a)
        } else {
            None
        }
    };
    match answer {
        None => next.run(request).await,
        Some(0) => {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            next.run(request).await
        }
        Some(429) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded");
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            r
        }
        Some(code) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "Server Error",
        ),
    }
}

async fn get_repo(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (token, key) = match authorize(&state, &headers, &owner, &repo, |_| true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let st = lock(&state);
    let id = st.repos.get(&key).map_or(0, |r| r.id);
    let mut body = repository_json(&st.base_url, id, &owner, &repo);
    body["permissions"] = json!({"admin": token.admin, "maintain": token.admin, "push": token.push, "triage": token.push, "pull": token.pull});
    Json(body).into_response()
}

#[derive(Deserialize)]
struct HookConfig {
    url: Option<String>,
    secret: Option<String>,
    #[allow(dead_code)]
    content_type: Option<String>,
}

#[derive(Deserialize)]
struct HookBody {
    config: Option<HookConfig>,
    events: Option<Vec<String>>,
    add_events: Option<Vec<String>>,
    remove_events: Option<Vec<String>>,
    active: Option<bool>,
}

fn hook_json(base: &str, key: &str, h: &Hook) -> Value {
    json!({
        "type": "Repository",
        "id": h.id,
        "name": "web",
        "active": h.active,
        "events": h.events,
        "config": {"url": h.url, "content_type": "json", "insecure_ssl": "0", "secret": h.secret.as_ref().map(|_| "********")},
        "url": format!("{base}/repos/{key}/hooks/{}", h.id),
        "ping_url": format!("{base}/repos/{key}/hooks/{}/pings", h.id),
        "test_url": format!("{base}/repos/{key}/hooks/{}/test", h.id),
        "deliveries_url": format!("{base}/repos/{key}/hooks/{}/deliveries", h.id),
        "created_at": now(),
        "updated_at": now(),
        "last_response": {"code": null, "status": "unused", "message": null},
    })
}

async fn list_hooks(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.admin) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let st = lock(&state);
    let hooks: Vec<Value> = st
        .repos
        .get(&key)
        .map(|r| {
            r.hooks
                .iter()
                .map(|h| hook_json(&st.base_url, &key, h))
                .collect()
        })
        .unwrap_or_default();
    Json(hooks).into_response()
}

async fn create_hook(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<HookBody>,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.admin) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let Some(config) = body.config else {
        return invalid("config is required");
    };
    let Some(url) = config
        .url
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return invalid("config.url must be an http(s) URL");
    };
    let (json_hook, hook) = {
        let mut st = lock(&state);
        let id = st.next_id();
        let hook = Hook {
            id,
            url,
            secret: config.secret,
            events: body.events.unwrap_or_else(|| vec!["push".into()]),
            active: body.active.unwrap_or(true),
        };
        let base = st.base_url.clone();
        let Some(r) = st.repos.get_mut(&key) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        if r.hooks.iter().any(|h| h.url == hook.url) {
            return invalid("Hook already exists on this repository");
        }
        r.hooks.push(hook.clone());
        (hook_json(&base, &key, &hook), hook)
    };
    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": hook.id, "hook": json_hook});
    hooks::deliver(&state, &key, "ping", ping);
    (StatusCode::CREATED, Json(json_hook)).into_response()
}

async fn get_hook(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.admin) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let st = lock(&state);
    match st
        .repos
        .get(&key)
        .and_then(|r| r.hooks.iter().find(|h| h.id == id))
    {
        Some(h) => Json(hook_json(&st.base_url, &key, h)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn update_hook(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<HookBody>,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.admin) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let mut st = lock(&state);
    let base = st.base_url.clone();
    let Some(h) = st
        .repos
        .get_mut(&key)
        .and_then(|r| r.hooks.iter_mut().find(|h| h.id == id))
    else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(c) = body.config {
        if let Some(u) = c.url {
            h.url = u;
        }
        if c.secret.is_some() {
            h.secret = c.secret;
        }
    }
    if let Some(e) = body.events {
        h.events = e;
    }
    for e in body.add_events.unwrap_or_default() {
        if !h.events.contains(&e) {
            h.events.push(e);
        }
    }
    let remove = body.remove_events.unwrap_or_default();
    h.events.retain(|e| !remove.contains(e));
    if let Some(a) = body.active {
        h.active = a;
    }
    Json(hook_json(&base, &key, h)).into_response()
}

/// `POST /repos/{owner}/{repo}/hooks/{id}/pings`: a ping to that hook alone.
async fn ping_hook(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.admin) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let known = lock(&state)
        .repos
        .get(&key)
        .is_some_and(|r| r.hooks.iter().any(|h| h.id == id));
    if !known {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    hooks::deliver_to(
        &state,
        &key,
        Some(id),
        "ping",
        serde_json::json!({"zen": "Keep it logically awesome.", "hook_id": id}),
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_hook(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.admin) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let mut st = lock(&state);
    let Some(r) = st.repos.get_mut(&key) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let before = r.hooks.len();
    r.hooks.retain(|h| h.id != id);
    if r.hooks.len() == before {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct NewRepo {
    owner: String,
    name: String,
}

async fn sim_create_repo(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<NewRepo>,
) -> Response {
    match token_of(&state, &headers) {
        Some(t) if t.admin => {}
        Some(_) => return error(StatusCode::FORBIDDEN, "admin token required"),
        None => return error(StatusCode::UNAUTHORIZED, "Bad credentials"),
    }
    match crate::create_repo(&state, &body.owner, &body.name) {
        Ok(_) => {
            let st = lock(&state);
            let id = st
                .repos
                .get(&format!("{}/{}", body.owner, body.name))
                .map_or(0, |r| r.id);
            (
                StatusCode::CREATED,
                Json(repository_json(&st.base_url, id, &body.owner, &body.name)),
            )
                .into_response()
        }
        Err(e) => invalid(&format!("{e:#}")),
    }
}
