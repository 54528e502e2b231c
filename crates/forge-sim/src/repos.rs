//! The repositories on disk, through the git CLI: reading branches and what a push changed, and
//! the `push` payload a change sends, shaped as GitHub documents it.

use serde_json::{json, Value};

use crate::http::repository_json;
use crate::{lock, Shared};

pub(crate) async fn git(git_dir: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output()
        .await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub(crate) async fn branches(git_dir: &std::path::Path) -> Vec<(String, String)> {
    git(
        git_dir,
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/heads",
        ],
    )
    .await
    .lines()
    .filter_map(|l| {
        l.split_once(' ')
            .map(|(r, o)| (r.to_string(), o.to_string()))
    })
    .collect()
}

const ZERO: &str = "0000000000000000000000000000000000000000";

pub(crate) fn changed(
    before: &[(String, String)],
    after: &[(String, String)],
) -> Vec<(String, String, String)> {
    let find = |list: &[(String, String)], r: &str| {
        list.iter().find(|(n, _)| n == r).map(|(_, o)| o.clone())
    };
    let mut refs: Vec<&String> = before.iter().chain(after).map(|(r, _)| r).collect();
    refs.sort();
    refs.dedup();
    refs.into_iter()
        .filter_map(|r| {
            let old = find(before, r).unwrap_or_else(|| ZERO.into());
            let new = find(after, r).unwrap_or_else(|| ZERO.into());
            (old != new).then(|| (r.clone(), old, new))
        })
        .collect()
}

pub(crate) async fn push_payload(
    state: &Shared,
    key: &str,
    git_dir: &std::path::Path,
    refname: &str,
    old: &str,
    new: &str,
) -> Value {
    let (base_url, repo) = {
        let st = lock(state);
        let r = st.repos.get(key);
        (
            st.base_url.clone(),
            r.map(|r| (r.id, r.owner.clone(), r.name.clone())),
        )
    };
    let (id, owner, name) = repo.unwrap_or((0, String::new(), String::new()));
    let range = if old == ZERO {
        new.to_string()
    } else {
        format!("{old}..{new}")
    };
    let mut commits = Vec::new();
    if new != ZERO {
        let log = git(
            git_dir,
            &[
                "log",
                "--reverse",
                "--max-count=20",
                "--format=%H%x00%an%x00%ae%x00%aI%x00%s",
                &range,
            ],
        )
        .await;
        for line in log.lines() {
            let f: Vec<&str> = line.split('\0').collect();
            if f.len() < 5 {
                continue;
            }
            let files = git(
                git_dir,
                &[
                    "diff-tree",
                    "--root",
                    "--no-commit-id",
                    "--name-status",
                    "-r",
                    "-m",
                    "--first-parent",
                    f[0],
                ],
            )
            .await;
            let pick = |status: char| -> Vec<String> {
                files
                    .lines()
                    .filter(|l| l.starts_with(status))
                    .filter_map(|l| l.split('\t').nth(1))
                    .map(str::to_string)
                    .collect()
            };
            commits.push(json!({
                "id": f[0], "tree_id": "", "distinct": true, "message": f[4], "timestamp": f[3],
                "url": format!("{base_url}/{owner}/{name}/commit/{}", f[0]),
                "author": {"name": f[1], "email": f[2]}, "committer": {"name": f[1], "email": f[2]},
                "added": pick('A'), "removed": pick('D'), "modified": pick('M'),
            }));
        }
    }
    json!({
        "ref": refname,
        "before": old,
        "after": new,
        "created": old == ZERO,
        "deleted": new == ZERO,
        "forced": false,
        "base_ref": null,
        "compare": format!("{base_url}/{owner}/{name}/compare/{old}...{new}"),
        "head_commit": commits.last().cloned().unwrap_or(Value::Null),
        "commits": commits,
        "repository": repository_json(&base_url, id, &owner, &name),
        "pusher": {"name": "x-access-token", "email": null},
        "sender": {"login": "x-access-token", "id": 1, "type": "User"},
    })
}
