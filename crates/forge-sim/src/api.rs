//! The REST API, with GitHub's paths, field names, status codes and error bodies.
//!
//! Only what codex-runner uses: the repository, webhooks, and check runs. `/_sim/*` routes
//! are the forge's own (creating repositories) and are not part of GitHub's API.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::git_http::{repository_json, token_of};
use crate::{hooks, lock, CheckRun, Hook, Shared, Token};

/// At most this many annotations per check-run request, as GitHub requires.
const MAX_ANNOTATIONS: usize = 50;

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

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()});
    (status, Json(body)).into_response()
}

pub(crate) fn invalid(message: &str) -> Response {
    let body = json!({"message": "Validation Failed", "errors": [{"message": message, "code": "custom"}], "documentation_url": "https://docs.github.com/rest", "status": "422"});
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

fn now() -> String {
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

/// Whether `t` may create and update check runs (on github.com: installation tokens only).
fn may_write_checks(state: &Shared, t: &Token) -> bool {
    t.checks && (t.installation || !lock(state).checks_need_app)
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
struct CheckBody {
    name: Option<String>,
    head_sha: Option<String>,
    details_url: Option<String>,
    external_id: Option<String>,
    status: Option<String>,
    started_at: Option<String>,
    conclusion: Option<String>,
    completed_at: Option<String>,
    output: Option<Value>,
}

const STATUSES: &[&str] = &[
    "queued",
    "in_progress",
    "completed",
    "waiting",
    "requested",
    "pending",
];
const CONCLUSIONS: &[&str] = &[
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
];

fn check_json(base: &str, key: &str, c: &CheckRun) -> Value {
    let mut output = c.output.clone();
    if !output.is_object() {
        output = json!({});
    }
    output["annotations_count"] = json!(c.annotations.len());
    output["annotations_url"] = json!(format!(
        "{base}/repos/{key}/check-runs/{}/annotations",
        c.id
    ));
    for field in ["title", "summary", "text"] {
        if output.get(field).is_none() {
            output[field] = Value::Null;
        }
    }
    json!({
        "id": c.id,
        "node_id": format!("CR_sim{}", c.id),
        "head_sha": c.head_sha,
        "external_id": c.external_id,
        "url": format!("{base}/repos/{key}/check-runs/{}", c.id),
        "html_url": format!("{base}/{key}/runs/{}", c.id),
        "details_url": c.details_url,
        "status": c.status,
        "conclusion": c.conclusion,
        "started_at": c.started_at,
        "completed_at": c.completed_at,
        "output": output,
        "name": c.name,
        "check_suite": {"id": 1},
        "app": {"id": 1, "slug": "codex-runner", "name": "codex-runner", "node_id": "A_sim1", "owner": null, "description": null, "external_url": base, "html_url": base, "created_at": null, "updated_at": null, "permissions": {}, "events": []},
        "pull_requests": [],
    })
}

/// Apply a create/update body to a check run; a 422 message when it breaks GitHub's rules.
fn apply(c: &mut CheckRun, b: CheckBody) -> Result<(), String> {
    if let Some(s) = b.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(format!(
                "status `{s}` is not one of {}",
                STATUSES.join(", ")
            ));
        }
        c.status = s;
    }
    if let Some(x) = b.conclusion {
        if !CONCLUSIONS.contains(&x.as_str()) {
            return Err(format!(
                "conclusion `{x}` is not one of {}",
                CONCLUSIONS.join(", ")
            ));
        }
        c.conclusion = Some(x);
        c.status = "completed".into();
    }
    if c.status == "completed" && c.conclusion.is_none() {
        return Err("conclusion is required when status is completed".into());
    }
    if c.status == "completed" && c.completed_at.is_none() {
        c.completed_at = Some(b.completed_at.clone().unwrap_or_else(now));
    }
    if let Some(t) = b.started_at {
        c.started_at = Some(t);
    }
    if let Some(t) = b.completed_at {
        c.completed_at = Some(t);
    }
    if let Some(u) = b.details_url {
        c.details_url = Some(u);
    }
    if let Some(e) = b.external_id {
        c.external_id = Some(e);
    }
    if let Some(mut out) = b.output {
        if out.get("title").is_none() || out.get("summary").is_none() {
            return Err("output needs title and summary".into());
        }
        if let Some(Value::Array(a)) = out.get_mut("annotations").map(Value::take) {
            if a.len() > MAX_ANNOTATIONS {
                return Err(format!(
                    "at most {MAX_ANNOTATIONS} annotations per request; send the rest in updates"
                ));
            }
            c.annotations.extend(a);
        }
        if let Some(o) = out.as_object_mut() {
            o.remove("annotations");
        }
        c.output = out;
    }
    Ok(())
}

/// The repository key and the commit `reference` names, for a caller that may read it.
async fn readable_commit(
    state: &Shared,
    headers: &HeaderMap,
    owner: &str,
    repo: &str,
    reference: &str,
) -> Result<(String, String), Response> {
    let (_, key) =
        authorize(state, headers, owner, repo, |_| true).map_err(IntoResponse::into_response)?;
    match resolve_commit(state, &key, reference).await {
        Some(sha) => Ok((key, sha)),
        None => Err(invalid(&format!("No commit found for ref: {reference}"))),
    }
}

async fn resolve_commit(state: &Shared, key: &str, reference: &str) -> Option<String> {
    let git_dir = {
        let st = lock(state);
        st.root.join(format!("{key}.git"))
    };
    let out = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{reference}^{{commit}}"),
        ])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn create_check(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<CheckBody>,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| {
        may_write_checks(&state, t)
    }) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let (Some(name), Some(head_sha)) = (body.name.clone(), body.head_sha.clone()) else {
        return invalid("name and head_sha are required");
    };
    let Some(sha) = resolve_commit(&state, &key, &head_sha)
        .await
        .filter(|s| s.starts_with(&head_sha))
    else {
        return invalid(&format!("No commit found for SHA: {head_sha}"));
    };
    let mut st = lock(&state);
    let id = st.next_id();
    let mut run = CheckRun {
        id,
        name,
        head_sha: sha,
        status: "queued".into(),
        conclusion: None,
        started_at: Some(now()),
        completed_at: None,
        external_id: None,
        details_url: None,
        output: json!({}),
        annotations: Vec::new(),
    };
    if let Err(m) = apply(&mut run, body) {
        return invalid(&m);
    }
    let base = st.base_url.clone();
    let body = check_json(&base, &key, &run);
    if let Some(r) = st.repos.get_mut(&key) {
        r.check_runs.push(run);
    }
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn update_check(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<CheckBody>,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| {
        may_write_checks(&state, t)
    }) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let mut st = lock(&state);
    let base = st.base_url.clone();
    let Some(run) = st
        .repos
        .get_mut(&key)
        .and_then(|r| r.check_runs.iter_mut().find(|c| c.id == id))
    else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut next = run.clone();
    if let Err(m) = apply(&mut next, body) {
        return invalid(&m);
    }
    *run = next;
    Json(check_json(&base, &key, run)).into_response()
}

async fn get_check(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |_| true) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let st = lock(&state);
    match st
        .repos
        .get(&key)
        .and_then(|r| r.check_runs.iter().find(|c| c.id == id))
    {
        Some(c) => Json(check_json(&st.base_url, &key, c)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn list_annotations(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |_| true) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let st = lock(&state);
    match st
        .repos
        .get(&key)
        .and_then(|r| r.check_runs.iter().find(|c| c.id == id))
    {
        Some(c) => Json(Value::Array(c.annotations.clone())).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    check_name: Option<String>,
    status: Option<String>,
}

async fn list_checks(
    State(state): State<Shared>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let (key, sha) = match readable_commit(&state, &headers, &owner, &repo, &reference).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let st = lock(&state);
    let runs: Vec<Value> = st
        .repos
        .get(&key)
        .map(|r| {
            r.check_runs
                .iter()
                .filter(|c| c.head_sha == sha)
                .filter(|c| q.check_name.as_ref().is_none_or(|n| *n == c.name))
                .filter(|c| q.status.as_ref().is_none_or(|s| *s == c.status))
                .rev()
                .map(|c| check_json(&st.base_url, &key, c))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"total_count": runs.len(), "check_runs": runs})).into_response()
}

#[derive(Deserialize)]
struct StatusBody {
    state: Option<String>,
    target_url: Option<String>,
    description: Option<String>,
    context: Option<String>,
}

fn status_json(base: &str, key: &str, s: &crate::CommitStatus) -> Value {
    json!({
        "id": s.id,
        "node_id": format!("SC_sim{}", s.id),
        "url": format!("{base}/repos/{key}/statuses/{}", s.sha),
        "state": s.state,
        "description": s.description,
        "target_url": s.target_url,
        "context": s.context,
        "created_at": now(),
        "updated_at": now(),
        "creator": null,
    })
}

/// `POST /repos/{owner}/{repo}/statuses/{sha}`: needs push (classic) or statuses: write.
async fn create_status(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<StatusBody>,
) -> Response {
    let key = match authorize(&state, &headers, &owner, &repo, |t| t.push) {
        Ok((_, k)) => k,
        Err(r) => return r.into_response(),
    };
    let Some(st_name) = body
        .state
        .filter(|s| ["error", "failure", "pending", "success"].contains(&s.as_str()))
    else {
        return invalid("state must be one of error, failure, pending, success");
    };
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 140)
    {
        return invalid("description is too long (maximum is 140 characters)");
    }
    match resolve_commit(&state, &key, &sha).await {
        Some(full) if full == sha => {}
        _ => return invalid(&format!("No commit found for SHA: {sha}")),
    }
    let mut st = lock(&state);
    let id = st.next_id();
    let status = crate::CommitStatus {
        id,
        sha,
        state: st_name,
        context: body.context.unwrap_or_else(|| "default".into()),
        description: body.description,
        target_url: body.target_url,
    };
    let json_status = status_json(&st.base_url, &key, &status);
    if let Some(r) = st.repos.get_mut(&key) {
        r.statuses.push(status);
    }
    (StatusCode::CREATED, Json(json_status)).into_response()
}

/// `GET /repos/{owner}/{repo}/commits/{ref}/statuses`: newest first.
async fn list_statuses(
    State(state): State<Shared>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let (key, sha) = match readable_commit(&state, &headers, &owner, &repo, &reference).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let st = lock(&state);
    let list: Vec<Value> = st
        .repos
        .get(&key)
        .map(|r| {
            r.statuses
                .iter()
                .filter(|s| s.sha == sha)
                .rev()
                .map(|s| status_json(&st.base_url, &key, s))
                .collect()
        })
        .unwrap_or_default();
    Json(list).into_response()
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
