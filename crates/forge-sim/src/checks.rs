//! Check runs and commit statuses: create, update, list, annotations, with GitHub's rules on
//! who may write them and what each field accepts.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{authorize, error, invalid, now};
use crate::{lock, CheckRun, Shared, Token};

/// At most this many annotations per check-run request, as GitHub requires.
pub(crate) const MAX_ANNOTATIONS: usize = 50;

/// Whether `t` may create and update check runs (on github.com: installation tokens only).
pub(crate) fn may_write_checks(state: &Shared, t: &Token) -> bool {
    t.checks && (t.installation || !lock(state).checks_need_app)
}

#[derive(Deserialize)]
pub(crate) struct CheckBody {
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

pub(crate) const STATUSES: &[&str] = &[
    "queued",
    "in_progress",
    "completed",
    "waiting",
    "requested",
    "pending",
];

pub(crate) const CONCLUSIONS: &[&str] = &[
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
];

pub(crate) fn check_json(base: &str, key: &str, c: &CheckRun) -> Value {
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
pub(crate) fn apply(c: &mut CheckRun, b: CheckBody) -> Result<(), String> {
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
pub(crate) async fn readable_commit(
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

pub(crate) async fn resolve_commit(state: &Shared, key: &str, reference: &str) -> Option<String> {
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

pub(crate) async fn create_check(
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

pub(crate) async fn update_check(
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

pub(crate) async fn get_check(
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

pub(crate) async fn list_annotations(
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
pub(crate) struct ListQuery {
    check_name: Option<String>,
    status: Option<String>,
}

pub(crate) async fn list_checks(
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
pub(crate) struct StatusBody {
    state: Option<String>,
    target_url: Option<String>,
    description: Option<String>,
    context: Option<String>,
}

pub(crate) fn status_json(base: &str, key: &str, s: &crate::CommitStatus) -> Value {
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
pub(crate) async fn create_status(
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
pub(crate) async fn list_statuses(
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
