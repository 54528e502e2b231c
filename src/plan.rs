//! PURE. From what the inbox holds at the branch tip to an ordered list of work items.
//!
//! The engine reads the tree and the ledger (what already ran); this module decides, for each
//! entry, whether it runs, is rejected (and why), or is left alone. No I/O here.

use crate::commit::CommitId;
use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::contract::handlers::{HandlerIndex, HandlerSpec};
use crate::contract::request::{
    parse_request, request_stem, schema_violations, Request, RequestId,
};
use crate::contract::units::format_duration;
use crate::contract::words::Origin;
use crate::contract::yaml::locate;
use crate::contract::Violation;

/// What a tree entry in the inbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryContent {
    /// A regular file and its bytes.
    Blob(Vec<u8>),
    /// A symbolic link: never followed.
    Symlink,
    /// A directory or a submodule.
    Dir,
}

/// Whether `path` is handler code: what a request's run depends on besides the request.
pub fn is_handler_code(path: &str) -> bool {
    path.starts_with("handlers/") || path.starts_with("containers/")
}

/// One entry directly under the inbox at the tip.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    /// Path in the repository (`requests/x.yaml`).
    pub path: String,
    /// What the entry is.
    pub content: EntryContent,
    /// The object id of the entry, to name rejected files that have no usable id.
    pub object: String,
    /// The commit on the branch that brought this file (the merge commit for a merged PR).
    pub commit: CommitId,
    /// Position of that commit, oldest first, so requests run in merge order.
    pub order: usize,
    /// Handler code (`handlers/`, `containers/`) that commit also changes; a request brought
    /// together with a change to the code that would run it is rejected (empty when the
    /// repository allows it).
    pub code_changes: Vec<String>,
}

/// What the ledger knows about an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Never ran.
    No,
    /// Ran and sits in `processed/`.
    Processed,
    /// Ran and was left in the inbox (`cleanup_after_success: false`) at this path.
    InPlace(String),
}

/// A request ready to run.
#[derive(Debug, Clone)]
pub struct Runnable {
    /// The parsed request.
    pub request: Request,
    /// The handler it runs, from the index of the commit that brought it.
    pub handler: std::sync::Arc<HandlerSpec>,
    /// The lock key.
    pub resource: String,
    /// The effective timeout (the handler's, or the request's if shorter).
    pub timeout: Duration,
}

/// What to do with one inbox entry.
#[derive(Debug, Clone)]
pub enum Action {
    /// Run it.
    Run(Box<Runnable>),
    /// Record it as rejected, with every reason.
    Reject(Vec<Violation>),
}

/// One unit of work for the engine.
#[derive(Debug, Clone)]
pub struct WorkItem {
    /// Path of the request file.
    pub file: String,
    /// The commit that brought it.
    pub commit: CommitId,
    /// Id used for `logs/<id>.jsonl` and `processed/<id>.yaml`: the request id when usable.
    pub log_id: String,
    /// Run or reject.
    pub action: Action,
}

/// The outcome of planning a pass.
#[derive(Debug, Default)]
pub struct Plan {
    /// Work in merge order.
    pub items: Vec<WorkItem>,
    /// Entries left alone, with the reason (shown to the operator, not recorded in git).
    pub ignored: Vec<(String, String)>,
}

/// Decide what each inbox entry becomes.
///
/// `index_at` gives the handler index at the commit that brought an entry: routing, params
/// schema, script and image all come from what was merged with the request.
pub fn plan<'i>(
    entries: &[InboxEntry],
    index_at: impl Fn(CommitId) -> Result<&'i HandlerIndex, &'i [Violation]>,
    done: impl Fn(&RequestId) -> Done,
) -> Plan {
    let mut sorted: Vec<&InboxEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| (a.order, &a.path).cmp(&(b.order, &b.path)));
    let mut out = Plan::default();
    let mut seen: BTreeSet<RequestId> = BTreeSet::new();
    for entry in sorted {
        let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
        // Two files may hold the same bytes (one blob): their log ids come from the path too.
        let key = entry_key(entry);
        let invalid_id = format!("invalid-{key}");
        if request_stem(name).is_none() {
            if entry.content == EntryContent::Dir {
                out.ignored.push((
                    entry.path.clone(),
                    "a directory; requests must sit directly in the inbox".into(),
                ));
            }
            continue;
        }
        let item = |log_id: String, action| WorkItem {
            file: entry.path.clone(),
            commit: entry.commit,
            log_id,
            action,
        };
        let bytes = match &entry.content {
            EntryContent::Blob(b) => b,
            EntryContent::Symlink | EntryContent::Dir => {
                let what = if entry.content == EntryContent::Symlink {
                    "a symbolic link"
                } else {
                    "a directory"
                };
                let v = Violation::new(
                    &entry.path,
                    "not-regular-file",
                    format!("the request is {what}, not a regular file"),
                )
                .hint("commit the YAML file itself; links are never followed");
                out.items.push(item(invalid_id, Action::Reject(vec![v])));
                continue;
            }
        };
        let request = match parse_request(&entry.path, bytes) {
            Ok(r) => r,
            Err(mut v) => {
                if let Ok(index) = index_at(entry.commit) {
                    name_known_kinds(&mut v.0, index);
                }
                out.items.push(item(invalid_id, Action::Reject(v.0)));
                continue;
            }
        };
        let dup_id = format!("{}.dup-{}", request.id, &key[..8]);
        let duplicate = |why: String, hint: &str| {
            let v = Violation::new(&entry.path, "duplicate-id", why)
                .at(locate(&request.source, &["id".into()], false))
                .hint(hint);
            item(dup_id.clone(), Action::Reject(vec![v]))
        };
        match done(&request.id) {
            Done::InPlace(file) if file == entry.path => continue,
            Done::No => {}
            Done::Processed | Done::InPlace(_) => {
                let why = format!("id `{}` has already run", request.id);
                out.items.push(duplicate(
                    why,
                    "give this request a new id (or a new file name)",
                ));
                continue;
            }
        }
        if !seen.insert(request.id.clone()) {
            let why = format!("id `{}` appears twice in the inbox", request.id);
            out.items.push(duplicate(
                why,
                "each request needs its own id; the earlier file runs",
            ));
            continue;
        }
        let log_id = request.id.to_string();
        let checked = match index_at(entry.commit) {
            Ok(index) => check_against_handler(&request, index),
            Err(broken) => {
                let mut v = vec![Violation::new(
                    &entry.path,
                    "broken-index",
                    format!(
                        "handlers/index.yml at {}, the commit that brought this request, is broken",
                        entry.commit
                    ),
                )
                .hint("fix handlers/index.yml, then submit the request again under a new id")];
                v.extend(broken.iter().cloned());
                Err(v)
            }
        };
        let checked = match (checked, handler_change(entry)) {
            (Ok(r), None) => Ok(r),
            (Ok(_), Some(v)) => Err(vec![v]),
            (Err(mut v), change) => {
                v.extend(change);
                Err(v)
            }
        };
        let action = match checked {
            Ok(r) => Action::Run(Box::new(r)),
            Err(v) => Action::Reject(v),
        };
        out.items.push(item(log_id, action));
    }
    out
}

/// A `kind` the request schema refused (`PROBE`, `"echo "`): say which known kind it means,
/// now that the index is at hand.
fn name_known_kinds(violations: &mut [Violation], index: &HandlerIndex) {
    for v in violations.iter_mut().filter(|v| v.rule == "invalid-kind") {
        let Some(fix) = v.suggestion.clone() else {
            continue;
        };
        match index.route(&fix) {
            Ok(_) => {
                v.hint = Some(format!(
                    "write `kind: {fix}` (a handler in handlers/index.yml)"
                ))
            }
            Err(unknown) => {
                v.hint = Some(format!(
                    "`{fix}` is not a handler here either; {}",
                    unknown.hint()
                ));
                v.suggestion = unknown.closest;
            }
        }
    }
}

/// 12 hex digits naming an inbox entry (its path and content), for the log ids of files
/// that have no usable id of their own.
fn entry_key(entry: &InboxEntry) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(entry.path.as_bytes());
    h.update([0]);
    h.update(entry.object.as_bytes());
    hex::encode(&h.finalize()[..6])
}

/// The violation of a request brought by a commit that also changes handler code.
fn handler_change(entry: &InboxEntry) -> Option<Violation> {
    if entry.code_changes.is_empty() {
        return None;
    }
    let mut shown: Vec<&str> = entry
        .code_changes
        .iter()
        .take(5)
        .map(String::as_str)
        .collect();
    if entry.code_changes.len() > 5 {
        shown.push("…");
    }
    Some(Violation::new(
        &entry.path,
        "handler-change",
        format!(
            "the commit that brought this request ({}) also changes handler code: {}",
            entry.commit.short(),
            shown.join(", ")
        ),
    )
    .hint("merge handler changes in a pull request of their own, then submit the request again under a new id (or set codex.allow_handler_changes_with_requests)"))
}

fn check_against_handler(
    request: &Request,
    index: &HandlerIndex,
) -> Result<Runnable, Vec<Violation>> {
    let file = &request.file;
    let at = |path: &[&str]| {
        let steps: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        locate(&request.source, &steps, false)
    };
    let handler = index.route(&request.kind).map_err(|unknown| {
        let mut v = Violation::new(file, "unknown-kind", unknown.to_string())
            .at(at(&["kind"]))
            .saw(
                format!("one of {}", unknown.known.join(", ")),
                format!("`{}`", request.kind),
            )
            .hint(unknown.hint());
        v.suggestion = unknown.closest.clone();
        vec![v]
    })?;
    let mut errors = Vec::new();
    if let Some(schema) = &handler.params {
        let params = Value::Object(request.params.clone());
        let look = format!(
            "see the params schema of `{}` in handlers/index.yml (codex-runner handlers list)",
            request.kind
        );
        errors.extend(schema_violations(
            schema,
            &params,
            &request.source,
            file,
            "/params",
            Origin::Params,
            &look,
        ));
    }
    let resource = match &request.resource {
        Some(r) => r.clone(),
        None => match handler
            .resource
            .render(&request.kind, request.id.as_str(), &request.params)
        {
            Ok(r) => r,
            Err(m) => {
                errors.push(
                    Violation::new(file, "missing-resource-param", m)
                        .at(at(&["params"]))
                        .hint("set it in `params:`, or set `resource:`"),
                );
                String::new()
            }
        },
    };
    let timeout = match request.timeout {
        Some(t) if t > handler.timeout => {
            errors.push(
                Violation::new(
                    file,
                    "timeout-too-long",
                    format!(
                        "timeout {} is longer than the handler's {}",
                        format_duration(t),
                        format_duration(handler.timeout)
                    ),
                )
                .at(at(&["timeout"]))
                .hint("a request may only shorten the handler's timeout"),
            );
            t
        }
        Some(t) => t,
        None => handler.timeout,
    };
    if errors.is_empty() {
        Ok(Runnable {
            request: request.clone(),
            handler: handler.clone(),
            resource,
            timeout,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "handlers:\n  echo:\n    run: handlers/echo.sh\n    image: x\n    timeout: 1m\n    params:\n      type: object\n      required: [message]\n      properties:\n        message: {type: string}\n  deploy:\n    run: handlers/deploy.sh\n    image: x\n    resource: \"{{ params.service }}\"\n";

    fn entry(path: &str, text: &str, order: usize) -> InboxEntry {
        InboxEntry {
            path: path.into(),
            content: EntryContent::Blob(text.as_bytes().to_vec()),
            object: format!("{:040x}", order + path.len()),
            commit: commit(order),
            order,
            code_changes: vec![],
        }
    }

    /// The commit that brought the request in position `order` (one commit per position).
    fn commit(order: usize) -> CommitId {
        CommitId::from_bytes([order as u8 + 1; 20])
    }

    fn run(entries: &[InboxEntry], done: impl Fn(&RequestId) -> Done) -> Plan {
        let index = HandlerIndex::parse(INDEX.as_bytes()).unwrap();
        plan(entries, |_| Ok(&index), done)
    }

    #[test]
    fn a_broken_index_at_the_merge_commit_rejects_its_requests() {
        let broken = vec![Violation::new("handlers/index.yml", "invalid-run", "bad")];
        let good = HandlerIndex::parse(INDEX.as_bytes()).unwrap();
        let entries = [
            entry("requests/a.yaml", "kind: echo\nparams: {message: x}\n", 0),
            entry("requests/b.yaml", "kind: echo\nparams: {message: x}\n", 1),
        ];
        let index_at = |c: CommitId| {
            if c == commit(0) {
                Err(broken.as_slice())
            } else {
                Ok(&good)
            }
        };
        let p = plan(&entries, index_at, |_| Done::No);
        assert_eq!(rules(&p.items[0]), ["broken-index", "invalid-run"]);
        assert!(matches!(p.items[1].action, Action::Run(_)));
    }

    fn rules(item: &WorkItem) -> Vec<&str> {
        match &item.action {
            Action::Reject(v) => v.iter().map(|v| &*v.rule).collect(),
            Action::Run(_) => vec![],
        }
    }

    #[test]
    fn orders_by_merge_then_name_and_ignores_non_requests() {
        let p = run(
            &[
                entry("requests/b.yaml", "kind: echo\nparams: {message: hi}\n", 2),
                entry("requests/a.yaml", "kind: echo\nparams: {message: hi}\n", 2),
                entry("requests/z.yml", "kind: echo\nparams: {message: hi}\n", 1),
                entry("requests/.gitkeep", "", 0),
                entry("requests/README.md", "# hi", 0),
            ],
            |_| Done::No,
        );
        let files: Vec<_> = p.items.iter().map(|i| i.file.as_str()).collect();
        assert_eq!(
            files,
            ["requests/z.yml", "requests/a.yaml", "requests/b.yaml"]
        );
        assert!(p.items.iter().all(|i| matches!(i.action, Action::Run(_))));
    }

    #[test]
    fn resource_and_timeout() {
        let p = run(
            &[entry(
                "requests/d.yaml",
                "kind: deploy\nparams: {service: web}\n",
                0,
            )],
            |_| Done::No,
        );
        let Action::Run(r) = &p.items[0].action else {
            panic!("{:?}", p.items[0])
        };
        assert_eq!(r.resource, "web");
        assert_eq!(r.timeout, crate::contract::handlers::DEFAULT_TIMEOUT);
        let p = run(
            &[entry(
                "requests/d.yaml",
                "kind: deploy\nresource: db\ntimeout: 5s\n",
                0,
            )],
            |_| Done::No,
        );
        let Action::Run(r) = &p.items[0].action else {
            panic!()
        };
        assert_eq!(
            (r.resource.as_str(), r.timeout),
            ("db", Duration::from_secs(5))
        );
    }

    #[test]
    fn rejections_name_the_rule() {
        let p = run(
            &[
                entry("requests/k.yaml", "kind: deplyo\n", 0),
                entry("requests/p.yaml", "kind: echo\nparams:\n  message: 5\n", 1),
                entry("requests/r.yaml", "kind: deploy\n", 2),
                entry(
                    "requests/t.yaml",
                    "kind: echo\ntimeout: 2h\nparams: {message: x}\n",
                    3,
                ),
            ],
            |_| Done::No,
        );
        assert_eq!(rules(&p.items[0]), ["unknown-kind"]);
        if let Action::Reject(v) = &p.items[0].action {
            assert_eq!(v[0].line, Some(1));
            assert!(
                v[0].hint
                    .as_deref()
                    .unwrap_or_default()
                    .contains("did you mean `deploy`"),
                "{:?}",
                v[0]
            );
        }
        assert_eq!(rules(&p.items[1]), ["wrong-type"]);
        if let Action::Reject(v) = &p.items[1].action {
            assert_eq!((v[0].line, v[0].column), (Some(3), Some(12)));
            assert!(
                v[0].hint
                    .as_deref()
                    .unwrap_or_default()
                    .contains("quote it to make it text: `message: \"5\"`"),
                "{:?}",
                v[0]
            );
        }
        assert_eq!(rules(&p.items[2]), ["missing-resource-param"]);
        assert_eq!(rules(&p.items[3]), ["timeout-too-long"]);
    }

    #[test]
    fn duplicates_and_done() {
        let text = "kind: echo\nid: same\nparams: {message: x}\n";
        let p = run(
            &[
                entry("requests/a.yaml", text, 0),
                entry("requests/b.yaml", text, 1),
            ],
            |_| Done::No,
        );
        assert!(matches!(p.items[0].action, Action::Run(_)));
        assert_eq!(rules(&p.items[1]), ["duplicate-id"]);
        assert!(p.items[1].log_id.starts_with("same.dup-"));

        let p = run(&[entry("requests/a.yaml", text, 0)], |_| Done::Processed);
        assert_eq!(rules(&p.items[0]), ["duplicate-id"]);
        let p = run(&[entry("requests/a.yaml", text, 0)], |_| {
            Done::InPlace("requests/a.yaml".into())
        });
        assert!(p.items.is_empty());
    }

    #[test]
    fn a_request_brought_with_handler_code_is_rejected() {
        let mut with_code = entry("requests/a.yaml", "kind: echo\nparams: {message: x}\n", 0);
        with_code.code_changes = vec!["handlers/echo.sh".into(), "handlers/index.yml".into()];
        let alone = entry("requests/b.yaml", "kind: echo\nparams: {message: x}\n", 1);
        let p = run(&[with_code, alone], |_| Done::No);
        match &p.items[0].action {
            Action::Reject(v) => {
                assert_eq!(
                    (&*v[0].rule, v[0].file.as_str()),
                    ("handler-change", "requests/a.yaml")
                );
                assert!(
                    v[0].message
                        .contains("handlers/echo.sh, handlers/index.yml"),
                    "{}",
                    v[0]
                );
            }
            Action::Run(_) => panic!("ran a request brought with handler code"),
        }
        assert!(matches!(p.items[1].action, Action::Run(_)));
        assert!(is_handler_code("containers/deploy/Dockerfile"));
        assert!(!is_handler_code("requests/handlers/x.yaml"));
    }

    #[test]
    fn symlinks_and_bad_files_get_safe_log_ids() {
        let mut link = entry("requests/l.yaml", "", 0);
        link.content = EntryContent::Symlink;
        let p = run(
            &[
                link,
                entry("requests/x.yaml", "kind: echo\nid: ../../x\n", 1),
            ],
            |_| Done::No,
        );
        assert_eq!(rules(&p.items[0]), ["not-regular-file"]);
        assert!(p.items[0].log_id.starts_with("invalid-"));
        assert!(RequestId::parse(&p.items[1].log_id).is_ok());
    }
}
