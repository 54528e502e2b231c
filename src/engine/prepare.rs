//! What a container needs before it is created: its image (pulled or built once per pass),
//! the request file it reads, its secrets, and its spec within the host's ceilings. Anything
//! missing makes the request unstartable, with the reason in the writer's terms.

use crate::commit::CommitId;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::contract::handlers::{HandlerSpec, ImageSource, SecretDelivery};
use crate::exec::spec::{container_name, container_spec, ContainerSpec, RunContext};
use crate::exec::ExecError;
use crate::plan::{Runnable, WorkItem};
use crate::record::ResultDir;

use super::context::PassContext;
use super::report::DispatchError;

/// What starting a container needs, prepared; or why it cannot start.
pub(super) enum Prepared {
    Ready {
        spec: Box<ContainerSpec>,
        /// File secrets to stage for it.
        secret_files: Vec<(String, String)>,
    },
    Unstartable(String),
}

/// Everything a container needs before it is created: the request file it reads, its
/// secrets, its spec within the host's ceilings. A followed container has all of it already
/// (its request file is not rewritten under its feet).
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    cx: &PassContext,
    item: &WorkItem,
    runnable: &Runnable,
    out: &ResultDir,
    image: &str,
    repo_dir: PathBuf,
    attempt: u32,
    followed: bool,
) -> Result<Prepared, DispatchError> {
    let request = &runnable.request;
    let handler = &runnable.handler;
    let request_json = out.request();
    let mut secret_env = Vec::new();
    let mut secret_files = Vec::new();
    if !followed {
        let mut doc = request.document.clone();
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("id".into(), json!(request.id.as_str()));
            obj.insert("file".into(), json!(item.file));
            obj.insert("commit".into(), json!(item.commit));
            obj.insert("resource".into(), json!(runnable.resource));
        }
        std::fs::write(&request_json, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("failed to write {}", request_json.display()))?;
        for (name, how) in &handler.secrets {
            let value = match cx.secrets.value(name) {
                Ok(v) => v,
                Err(msg) => {
                    return Ok(Prepared::Unstartable(format!(
                        "handler `{}` needs {msg}",
                        request.kind
                    )))
                }
            };
            match how {
                SecretDelivery::Env => {
                    let v = value.strip_suffix('\n').unwrap_or(&value);
                    let v = v.strip_suffix('\r').unwrap_or(v);
                    secret_env.push((name.clone(), v.to_string()));
                }
                SecretDelivery::File => secret_files.push((name.clone(), value)),
            }
        }
    }
    let name = container_name(&cx.runner, &cx.scope, request.id.as_str(), attempt);
    let staged =
        (!secret_files.is_empty()).then(|| crate::secrets::staged_path(cx.secrets.dir(), &name));
    let ctx = RunContext {
        runner: cx.runner.clone(),
        request_id: request.id.to_string(),
        scope: cx.scope.clone(),
        attempt,
        commit: item.commit,
        image: image.to_string(),
        repo_dir,
        request_json,
        timeout: runnable.timeout,
        params: request.params.clone(),
        secret_env,
        secret_files: staged,
    };
    Ok(match container_spec(handler, &ctx, &cx.limits) {
        Ok(spec) => Prepared::Ready {
            spec: Box::new(spec),
            secret_files,
        },
        Err(reason) => Prepared::Unstartable(reason),
    })
}

/// The image a handler runs in: its reference (pulled if missing) or its `build:` context
/// at `commit`, built once.
pub(super) async fn resolve_image(
    cx: &PassContext,
    commit: CommitId,
    handler: &HandlerSpec,
    repo_dir: &Path,
) -> Result<String, ExecError> {
    let known = |name: &str| cx.images.lock().is_ok_and(|seen| seen.contains(name));
    let remember = |name: &str| {
        if let Ok(mut seen) = cx.images.lock() {
            seen.insert(name.to_string());
        }
    };
    match &handler.image {
        ImageSource::Reference(r) => {
            if !known(r) {
                cx.executor()?.ensure_image(r).await?;
                remember(r);
            }
            Ok(r.clone())
        }
        ImageSource::Build(dir) => {
            let tree = cx.object_id(commit, &format!("containers/{dir}")).await?;
            let tag = format!("codex-runner-build/{dir}:{}", &tree[..12.min(tree.len())]);
            if known(&tag) {
                return Ok(tag);
            }
            let context = repo_dir.join("containers").join(dir);
            let _one_build = cx.builds.lock().await;
            cx.executor()?.ensure_built(&tag, &context).await?;
            remember(&tag);
            Ok(tag)
        }
    }
}
