//! Validating a pull request's requests before it is merged. Nothing from a pull request
//! runs: its files are only read from git and checked exactly as a pass would check them.
//!
//! The mainline's `codex.repo.yaml` is the authority (a pull request cannot change where its
//! requests go or relax the rules). Handlers are those of the pull request merged into the
//! mainline's tip, as the merge would make them: the mainline's handlers plus the pull
//! request's own changes, so one opened before a handler reached the mainline sees it. A
//! pull request that changes handler code and adds requests gets its requests flagged
//! (`handler-change`) unless the repository allows it, as the pass would reject them. Ids are
//! checked against what already ran on the mainline.

use crate::commit::CommitId;
use crate::contract::request::request_stem;
use crate::contract::yaml::MAX_FILE_BYTES;
use crate::contract::Violation;
use crate::git::{Mirror, TrialMerge};
use crate::plan::{self, Action, InboxEntry};

use super::remote_key;
use super::report::{DispatchError, DispatchOptions};
use super::survey::{deepen_until, done_at, git, index_at, resolve_branch};

/// A pull request to validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullJob {
    /// Its number.
    pub number: u64,
    /// The head commit the webhook named (the check run goes there).
    pub head_sha: String,
}

/// What validation found.
#[derive(Debug, Clone, Default)]
pub struct PullVerdict {
    /// The head commit validated.
    pub head: String,
    /// Request files that would run: `(file, "kind on resource")`.
    pub valid: Vec<(String, String)>,
    /// Everything wrong, with file and line where known.
    pub violations: Vec<Violation>,
}

/// Check the request files pull request `job` adds or changes.
pub async fn validate_pull(
    opts: &DispatchOptions,
    job: &PullJob,
) -> Result<PullVerdict, DispatchError> {
    let token = super::context::git_token(opts.git_auth.as_ref()).await?;
    let opts = opts.clone();
    let job = job.clone();
    tokio::task::spawn_blocking(move || validate_blocking(&opts, &job, token.as_deref()))
        .await
        .map_err(|e| DispatchError::Other(anyhow::anyhow!("validation task failed: {e}")))?
}

fn validate_blocking(
    opts: &DispatchOptions,
    job: &PullJob,
    token: Option<&str>,
) -> Result<PullVerdict, DispatchError> {
    // A mirror of its own: validation runs beside passes and must not race their fetches.
    let work = opts.work_dir.join(remote_key(&opts.remote)).join("pulls");
    let mut mirror = git(Mirror::open(&work, &opts.remote, token))?;
    // Shallow, as a pass's mirror: validating a pull request costs what its fork point is
    // from the tips, not what the history holds.
    mirror.set_shallow(true);
    let (branch, base_tip, config) = resolve_branch(
        &mirror,
        &DispatchOptions {
            branch: None,
            ..opts.clone()
        },
    )?;
    let head = git(mirror.fetch_pull(job.number))?;
    let verdict = validate_head(&mut mirror, job, &branch, base_tip, head, &config);
    mirror.forget_pull(job.number);
    verdict
}

/// Validate pull request `job`, fetched at `head`, against `branch` at `base_tip`.
fn validate_head(
    mirror: &mut Mirror,
    job: &PullJob,
    branch: &str,
    base_tip: CommitId,
    head: CommitId,
    config: &crate::contract::repo_config::RepoConfig,
) -> Result<PullVerdict, DispatchError> {
    if head.to_string() != job.head_sha {
        tracing::info!(pull = job.number, named = %job.head_sha, fetched = %head, "the pull request moved since the webhook; validating its current head");
    }
    fork_point(mirror, branch, job.number, base_tip, head)?;
    judge(mirror, base_tip, head, config)
}

/// Validate the requests `head` adds or changes since it left `base` in a repository on this
/// host (`codex-runner validate --base`, the GitHub Action): the same verdict the runner's
/// own check gives a pull request, with `base`'s `codex.repo.yaml` as the authority. Both
/// histories must be in the repository down to where they meet.
pub fn validate_local(repo: &str, base: &str, head: &str) -> Result<PullVerdict, DispatchError> {
    let mirror = git(Mirror::in_place(repo))?.ok_or_else(|| {
        DispatchError::Refused(format!("{repo} is not a repository on this host"))
    })?;
    let resolve = |rev: &str| {
        mirror.resolve(rev).map_err(|_| {
            DispatchError::Refused(format!(
                "`{rev}` names no commit in {repo} (a branch, a tag or a commit id; fetch it first if it is only on the remote)"
            ))
        })
    };
    let base_tip = resolve(base)?;
    let head = resolve(head)?;
    let config = super::survey::load_repo_config(&mirror, base_tip)?;
    mirror.fork_point(base_tip, head).map_err(|_| {
        DispatchError::Refused(format!(
            "`{base}` and `{head}` share no history in this clone: fetch more of it (`git fetch --deepen=100`, or check out with fetch-depth: 0)"
        ))
    })?;
    judge(&mirror, base_tip, head, &config)
}

/// What merging `head` into `base_tip` would run, and what it would reject.
fn judge(
    mirror: &Mirror,
    base_tip: CommitId,
    head: CommitId,
    config: &crate::contract::repo_config::RepoConfig,
) -> Result<PullVerdict, DispatchError> {
    let mut verdict = PullVerdict {
        head: head.to_string(),
        ..Default::default()
    };
    let merged = match git(mirror.trial_merge(base_tip, head))? {
        TrialMerge::Merged(m) => m,
        TrialMerge::Conflicts(conflicts) => {
            verdict.violations = conflicts
                .into_iter()
                .map(|path| {
                    Violation::new(
                        path,
                        "merge-conflict",
                        "the pull request conflicts with the mainline here",
                    )
                    .hint("merge or rebase onto the mainline, then push again")
                })
                .collect();
            return Ok(verdict);
        }
    };
    let index = match index_at(mirror, merged)? {
        Ok(index) => index,
        Err(v) => {
            verdict.violations = v.0;
            return Ok(verdict);
        }
    };
    let changed = git(mirror.changed_since_fork(base_tip, head))?;
    let code_changes: Vec<String> = if config.allow_handler_changes {
        Vec::new()
    } else {
        changed
            .iter()
            .filter(|p| plan::is_handler_code(p))
            .cloned()
            .collect()
    };
    let inbox = config.trigger_path.trim_end_matches('/');
    let wanted: Vec<&String> = changed
        .iter()
        .filter(|p| {
            p.rsplit_once('/')
                .is_some_and(|(dir, name)| dir == inbox && request_stem(name).is_some())
        })
        .collect();
    let entries: Vec<InboxEntry> =
        git(mirror.list_dir(head, &config.trigger_path, MAX_FILE_BYTES))?
            .into_iter()
            .filter(|(path, _, _)| wanted.contains(&path))
            .enumerate()
            .map(|(order, (path, content, object))| InboxEntry {
                path,
                content,
                object,
                commit: head,
                order,
                code_changes: code_changes.clone(),
            })
            .collect();
    let done = |id: &crate::contract::request::RequestId| done_at(mirror, base_tip, config, id);
    for item in plan::plan(&entries, |_| Ok(&index), done).items {
        match item.action {
            Action::Run(r) => verdict
                .valid
                .push((item.file, format!("{} on {}", r.request.kind, r.resource))),
            Action::Reject(v) => verdict.violations.extend(v),
        }
    }
    Ok(verdict)
}

/// Where pull request `number` (at `head`) left `branch` (at `base`), deepening a shallow
/// mirror on both sides until their histories meet.
fn fork_point(
    mirror: &mut Mirror,
    branch: &str,
    number: u64,
    base: CommitId,
    head: CommitId,
) -> Result<CommitId, DispatchError> {
    deepen_until(
        mirror,
        // Logged inside the pull request's span, which names it.
        "where the pull request forked",
        |m| m.fork_point(base, head),
        |m, depth| {
            m.deepen(branch, depth)?;
            m.deepen_pull(number, depth)
        },
    )
}
