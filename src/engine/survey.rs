//! What a pass finds before anything runs: the branch and its contract, the inbox at the tip,
//! the commit that brought each request (deepening a shallow mirror only as far as the oldest
//! pending one), results an earlier pass could not push, and attempts it did not finish.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::commit::CommitId;
use crate::contract::handlers::{HandlerIndex, INDEX_PATH};
use crate::contract::repo_config::{RepoConfig, CONFIG_PATH};
use crate::contract::request::request_stem;
use crate::contract::yaml::MAX_FILE_BYTES;
use crate::contract::{Checked, Violation};
use crate::git::Mirror;
use crate::plan::{self, Done, InboxEntry};
use crate::record::{read_status, Ledger, ResultDir, ResultFile, Status};

use super::context::Finished;
use super::journal;
use super::report::{DispatchError, DispatchOptions};

pub(super) fn git<T>(r: anyhow::Result<T>) -> Result<T, DispatchError> {
    r.map_err(DispatchError::Git)
}

pub(super) fn load_repo_config(
    mirror: &Mirror,
    tip: CommitId,
) -> Result<RepoConfig, DispatchError> {
    match git(mirror.read_file(tip, CONFIG_PATH))? {
        Some(bytes) => RepoConfig::parse(&bytes).map_err(|v| DispatchError::Contract {
            commit: tip,
            violations: v,
        }),
        None => {
            tracing::warn!("no {CONFIG_PATH} at {tip}; using the defaults");
            Ok(RepoConfig::default())
        }
    }
}

/// The handler index at `commit`, checked against the files of that commit.
pub(super) fn index_at(
    mirror: &Mirror,
    commit: CommitId,
) -> Result<Checked<HandlerIndex>, DispatchError> {
    let Some(bytes) = git(mirror.read_file(commit, INDEX_PATH))? else {
        let missing = Violation::new(
            INDEX_PATH,
            "missing-index",
            "the handler index does not exist",
        )
        .hint("add handlers/index.yml");
        return Ok(Err(missing.into()));
    };
    Ok(HandlerIndex::parse(&bytes).and_then(|index| {
        index.check_files(|p| mirror.path_kind(commit, p))?;
        Ok(index)
    }))
}

/// Find the mainline and its contract, then the branch to run from.
///
/// The contract at the mainline tip is the authority: a branch cannot lift
/// `enforce_merge_before_execution` for itself. `main` is asked first; its `mainline_branch`
/// may point elsewhere.
pub(super) fn resolve_branch(
    mirror: &Mirror,
    opts: &DispatchOptions,
) -> Result<(String, CommitId, RepoConfig), DispatchError> {
    let mut mainline = "main".to_string();
    let mut tip = git(mirror.fetch(&mainline))?;
    let mut config = match tip {
        Some(t) => load_repo_config(mirror, t)?,
        None => RepoConfig::default(),
    };
    if config.mainline_branch != mainline {
        mainline = config.mainline_branch.clone();
        tip = git(mirror.fetch(&mainline))?;
        if let Some(t) = tip {
            config = load_repo_config(mirror, t)?;
        }
    }
    let wanted = opts.branch.clone().unwrap_or_else(|| mainline.clone());
    if wanted == mainline {
        let tip = tip.ok_or_else(|| {
            DispatchError::Refused(format!(
                "branch `{mainline}` does not exist on {}",
                crate::git::redact(&opts.remote)
            ))
        })?;
        return Ok((wanted, tip, config));
    }
    if config.enforce_merge {
        return Err(DispatchError::Refused(format!(
            "branch `{wanted}` is not the mainline branch `{mainline}`, and {CONFIG_PATH} on `{mainline}` sets enforce_merge_before_execution: only merged requests run"
        )));
    }
    let tip = git(mirror.fetch(&wanted))?.ok_or_else(|| {
        DispatchError::Refused(format!(
            "branch `{wanted}` does not exist on {}",
            crate::git::redact(&opts.remote)
        ))
    })?;
    Ok((wanted, tip, config))
}

/// An attempt an earlier process journaled but never finished.
pub(super) struct Leftover {
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) record: journal::AttemptRecord,
}

/// Results executed in an earlier pass whose commit never reached the remote, and attempts
/// that never finished.
pub(super) fn pending_results(
    results_dir: &Path,
    mirror: &Mirror,
    tip: CommitId,
    config: &RepoConfig,
) -> anyhow::Result<(Vec<Finished>, Vec<Leftover>)> {
    let mut out = Vec::new();
    let mut leftovers = Vec::new();
    let Ok(dirs) = std::fs::read_dir(results_dir) else {
        return Ok((out, leftovers));
    };
    for d in dirs {
        let dir = d?.path();
        let files = ResultDir::at(dir.clone());
        let status = match read_status(&files.status()) {
            Ok(s) => s,
            Err(_) => {
                match journal::read(&files) {
                    Some(record) => leftovers.push(Leftover {
                        id: dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        dir,
                        record,
                    }),
                    // Not even journaled: no container was made; it starts afresh.
                    None => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
                continue;
            }
        };
        let already = published_status(mirror, tip, config, &status.id)?.is_some_and(|s| {
            s.commit == status.commit && s.file == status.file && s.attempt == status.attempt
        });
        if already {
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        out.push(Finished { status, files });
    }
    Ok((out, leftovers))
}

/// The status file of request `id` on the branch at `tip`, in either layout (see
/// [`Ledger::lookups`]); `None` when there is none or it does not parse.
pub(super) fn published_status(
    mirror: &Mirror,
    tip: CommitId,
    config: &RepoConfig,
    id: &str,
) -> anyhow::Result<Option<Status>> {
    for path in Ledger::of(config).lookups(ResultFile::Status, id) {
        if let Some(bytes) = mirror.read_file(tip, &path)? {
            return Ok(serde_json::from_slice::<Status>(&bytes).ok());
        }
    }
    Ok(None)
}

/// Whether request `id` already ran, as the branch at `tip` records it.
pub(super) fn done_at(
    mirror: &Mirror,
    tip: CommitId,
    config: &RepoConfig,
    id: &crate::contract::request::RequestId,
) -> Done {
    let ledger = Ledger::of(config);
    let archived = ledger.lookups(ResultFile::Archived, id.as_str());
    if archived.iter().any(|p| mirror.path_kind(tip, p).is_some()) {
        return Done::Processed;
    }
    match published_status(mirror, tip, config, id.as_str())
        .ok()
        .flatten()
    {
        Some(s) => Done::InPlace(s.file),
        None => Done::No,
    }
}

/// Whether the branch at `tip` records request `id` (archived, or by a status file), in
/// either layout.
pub(super) fn recorded(mirror: &Mirror, tip: CommitId, config: &RepoConfig, id: &str) -> bool {
    let ledger = Ledger::of(config);
    [ResultFile::Archived, ResultFile::Status]
        .into_iter()
        .flat_map(|f| ledger.lookups(f, id))
        .any(|p| mirror.path_kind(tip, &p).is_some())
}

/// What a pass found at the tip, before anything runs.
pub(super) struct Survey {
    /// Results an earlier pass executed but could not push.
    pub(super) pending: Vec<Finished>,
    /// Attempts an earlier process started but did not finish.
    pub(super) leftovers: Vec<Leftover>,
    /// Work in merge order, each request with the handler of the commit that brought it.
    pub(super) planned: plan::Plan,
}

/// The first-parent commit that brought each of `paths` to `branch` (see
/// [`Mirror::introducing_commits`]), deepening a shallow mirror as far as the oldest takes.
pub(super) fn introducing_commits(
    mirror: &mut Mirror,
    branch: &str,
    tip: CommitId,
    paths: &[String],
) -> Result<std::collections::HashMap<String, (CommitId, usize)>, DispatchError> {
    deepen_until(
        mirror,
        "where a pending request was merged",
        |m| m.introducing_commits(tip, paths, 100_000),
        |m, depth| m.deepen(branch, depth),
    )
}

/// `find`'s answer, deepening a shallow mirror (`deepen`) each time it reaches the mirror's
/// history's end ([`crate::git::NeedsDeeper`]): each step asks for four times the history
/// walked so far, and a remote that does not deepen it ends the search.
pub(crate) fn deepen_until<T>(
    mirror: &mut Mirror,
    what: &str,
    mut find: impl FnMut(&Mirror) -> anyhow::Result<T>,
    mut deepen: impl FnMut(&mut Mirror, usize) -> anyhow::Result<()>,
) -> Result<T, DispatchError> {
    let mut reached = None;
    loop {
        let cut = match find(mirror) {
            Ok(found) => return Ok(found),
            Err(e) => match e.downcast_ref::<crate::git::NeedsDeeper>() {
                Some(cut) => cut.depth,
                None => return Err(DispatchError::Git(e)),
            },
        };
        if reached.is_some_and(|r| cut <= r) {
            return Err(DispatchError::Git(anyhow::anyhow!(
                "the remote did not deepen the mirror's history past {cut} commits"
            )));
        }
        reached = Some(cut);
        let want = (cut + 1).saturating_mul(4);
        tracing::info!(
            walked = cut,
            depth = want,
            "deepening the mirror to find {what}"
        );
        git(deepen(mirror, want))?;
    }
}

/// Read the inbox at `tip`, find each request's merge commit and index, and plan.
pub(super) fn survey(
    mirror: &mut Mirror,
    branch: &str,
    tip: CommitId,
    config: &RepoConfig,
    results_dir: &Path,
) -> Result<Survey, DispatchError> {
    let tip_index = index_at(mirror, tip)?.map_err(|violations| DispatchError::Contract {
        commit: tip,
        violations,
    })?;
    let (pending, leftovers) = pending_results(results_dir, mirror, tip, config)?;
    let raw = git(mirror.list_dir(tip, &config.trigger_path, MAX_FILE_BYTES))?;
    let paths: Vec<String> = raw
        .iter()
        .filter(|(p, _, _)| request_stem(p.rsplit('/').next().unwrap_or_default()).is_some())
        .map(|(p, _, _)| p.clone())
        .collect();
    let intro = introducing_commits(mirror, branch, tip, &paths)?;
    let mirror = &*mirror;
    let deepest = intro.values().map(|(_, d)| *d).max().unwrap_or(0);
    // Handler code each bringing commit changes, unless the repository allows that.
    let mut code: BTreeMap<CommitId, Vec<String>> = BTreeMap::new();
    if !config.allow_handler_changes {
        for (commit, _) in intro.values() {
            if !code.contains_key(commit) {
                let changed = git(mirror.changed_by(*commit))?;
                let handler_code = changed.into_iter().filter(|p| plan::is_handler_code(p));
                code.insert(*commit, handler_code.collect());
            }
        }
    }
    let entries: Vec<InboxEntry> = raw
        .into_iter()
        .map(|(path, content, object)| {
            let (commit, depth) = intro.get(&path).copied().unwrap_or((tip, 0));
            InboxEntry {
                path,
                content,
                object,
                commit,
                order: deepest - depth,
                code_changes: code.get(&commit).cloned().unwrap_or_default(),
            }
        })
        .collect();

    // A request runs with the handlers of the commit that brought it.
    let mut indexes: BTreeMap<CommitId, Checked<HandlerIndex>> = BTreeMap::new();
    indexes.insert(tip, Ok(tip_index));
    for e in &entries {
        if let std::collections::btree_map::Entry::Vacant(slot) = indexes.entry(e.commit) {
            slot.insert(index_at(mirror, e.commit)?);
        }
    }
    let done = |id: &crate::contract::request::RequestId| done_at(mirror, tip, config, id);
    let index_at_commit = |commit: CommitId| match indexes.get(&commit) {
        Some(Ok(index)) => Ok(index),
        Some(Err(v)) => Err(v.0.as_slice()),
        None => Err(&[] as &[Violation]),
    };
    let planned = plan::plan(&entries, index_at_commit, done);
    for (path, why) in &planned.ignored {
        tracing::warn!(path = %path, "ignored: {why}");
    }
    Ok(Survey {
        pending,
        leftovers,
        planned,
    })
}
