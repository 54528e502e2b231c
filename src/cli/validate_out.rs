//! What `validate` prints: text for people, JSON for agents (versioned), GitHub workflow
//! commands plus a step summary for Actions, and SARIF 2.1.0 for code scanning.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::contract::{rules, Violation};

/// The version of `validate --format json`'s shape; it changes only when a field changes
/// meaning or goes away (new fields may appear).
pub const JSON_VERSION: u32 = 1;

/// What `validate` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems of the repository's contract (handlers/index.yml, codex.repo.yaml, merges).
    pub contract: Vec<Violation>,
    /// Each request file checked.
    pub files: Vec<FileResult>,
}

/// One request file's verdict.
#[derive(Debug)]
pub struct FileResult {
    /// Its path in the repository.
    pub file: String,
    /// What it would run (`echo on echo`) when valid.
    pub runs: Option<String>,
    /// Why it would be rejected.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether everything holds.
    pub fn valid(&self) -> bool {
        self.contract.is_empty() && self.files.iter().all(|f| f.violations.is_empty())
    }

    fn all(&self) -> impl Iterator<Item = &Violation> {
        self.contract
            .iter()
            .chain(self.files.iter().flat_map(|f| &f.violations))
    }

    fn rejected(&self) -> usize {
        self.files
            .iter()
            .filter(|f| !f.violations.is_empty())
            .count()
    }
}

/// One line per file, violations indented (the format the problem matcher reads).
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    for v in &r.contract {
        let _ = writeln!(out, "{v}");
    }
    for f in &r.files {
        match &f.runs {
            Some(what) if f.violations.is_empty() => {
                let _ = writeln!(out, "ok   {} ({what})", f.file);
            }
            _ => {
                let _ = writeln!(out, "FAIL {}", f.file);
                for v in &f.violations {
                    let _ = writeln!(out, "  {}", v.to_string().replace('\n', "\n  "));
                }
            }
        }
    }
    if r.files.is_empty() && r.contract.is_empty() {
        out.push_str("no request files found\n");
    }
    out
}

/// The versioned JSON shape (README.codex.md, "For agents").
pub fn json(r: &Report) -> Value {
    let files: Vec<Value> = r
        .files
        .iter()
        .map(|f| {
            json!({
                "file": f.file,
                "valid": f.violations.is_empty(),
                "runs": f.runs,
                "violations": f.violations,
            })
        })
        .collect();
    json!({
        "version": JSON_VERSION,
        "valid": r.valid(),
        "contract": r.contract,
        "files": files,
    })
}

/// Escape workflow-command data (the message), as GitHub's toolkit does.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escape a workflow-command property (file, title), as GitHub's toolkit does.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// The text of a violation for a person reading an annotation: the message, then the hint.
fn body(v: &Violation) -> String {
    match &v.hint {
        Some(h) => format!("{}\nhint: {h}", v.message),
        None => v.message.clone(),
    }
}

/// GitHub workflow commands: an `::error` per violation (file, line, column, the rule as
/// title), a line per valid file.
pub fn github(r: &Report) -> String {
    let mut out = String::new();
    for v in r.all() {
        let mut props = vec![format!("file={}", escape_property(&v.file))];
        if let Some(l) = v.line {
            props.push(format!("line={l}"));
        }
        if let Some(c) = v.column {
            props.push(format!("col={c}"));
        }
        props.push(format!(
            "title={}",
            escape_property(&format!("codex-runner: {}", v.rule))
        ));
        let _ = writeln!(
            out,
            "::error {}::{}",
            props.join(","),
            escape_data(&body(v))
        );
    }
    for f in r.files.iter().filter(|f| f.violations.is_empty()) {
        if let Some(what) = &f.runs {
            let _ = writeln!(out, "ok   {} ({what})", f.file);
        }
    }
    out
}

/// Step outputs for `$GITHUB_OUTPUT`: `valid`, `checked`, `rejected`.
pub fn outputs(r: &Report) -> String {
    format!(
        "valid={}\nchecked={}\nrejected={}\n",
        r.valid(),
        r.files.len(),
        r.rejected()
    )
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// A Markdown summary for `$GITHUB_STEP_SUMMARY`.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    let n = r.files.len();
    let rejected = r.rejected();
    let _ = writeln!(
        out,
        "### codex-runner: {}",
        match (n, rejected, r.contract.is_empty()) {
            (_, _, false) => "the repository's contract is broken".to_string(),
            (0, _, _) => "no request files to check".to_string(),
            (n, 0, _) => format!("{n} request{} would run", if n == 1 { "" } else { "s" }),
            (n, k, _) => format!(
                "{k} of {n} request{} would be rejected",
                if n == 1 { "" } else { "s" }
            ),
        }
    );
    if !r.contract.is_empty() {
        let _ = writeln!(out, "\n| File | Problem |\n|---|---|");
        for v in &r.contract {
            let _ = writeln!(out, "| `{}` | {} |", cell(&where_(v)), cell(&problem(v)));
        }
    }
    if !r.files.is_empty() {
        let _ = writeln!(out, "\n| Request | Result |\n|---|---|");
        for f in &r.files {
            let result = if f.violations.is_empty() {
                format!("✅ runs {}", f.runs.as_deref().unwrap_or_default())
            } else {
                let lines: Vec<String> = f.violations.iter().map(problem).collect();
                format!("❌ {}", lines.join("\n"))
            };
            let _ = writeln!(out, "| `{}` | {} |", cell(&f.file), cell(&result));
        }
    }
    out
}

fn where_(v: &Violation) -> String {
    match (v.line, v.column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", v.file),
        (Some(l), None) => format!("{}:{l}", v.file),
        _ => v.file.clone(),
    }
}

fn problem(v: &Violation) -> String {
    let at = v.line.map(|l| format!("line {l}: ")).unwrap_or_default();
    match &v.hint {
        Some(h) => format!("**{}** {at}{} — {h}", v.rule, v.message),
        None => format!("**{}** {at}{}", v.rule, v.message),
    }
}

/// SARIF 2.1.0, one run, a result per violation.
pub fn sarif(r: &Report) -> Value {
    let mut used: Vec<&str> = r.all().map(|v| v.rule.as_ref()).collect();
    used.sort_unstable();
    used.dedup();
    let rule_list: Vec<Value> = used
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": rules::describe(id) },
                "defaultConfiguration": { "level": "error" },
            })
        })
        .collect();
    let results: Vec<Value> = r
        .all()
        .map(|v| {
            let mut location = json!({
                "physicalLocation": {
                    "artifactLocation": { "uri": v.file, "uriBaseId": "SRCROOT" },
                }
            });
            if let Some(l) = v.line {
                let mut region = json!({ "startLine": l });
                if let Some(c) = v.column {
                    region["startColumn"] = json!(c);
                }
                location["physicalLocation"]["region"] = region;
            }
            let mut properties = serde_json::Map::new();
            for (k, val) in [
                ("hint", &v.hint),
                ("expected", &v.expected),
                ("found", &v.found),
                ("suggestion", &v.suggestion),
            ] {
                if let Some(val) = val {
                    properties.insert(k.into(), json!(val));
                }
            }
            json!({
                "ruleId": v.rule,
                "ruleIndex": used.iter().position(|u| *u == v.rule).unwrap_or_default(),
                "level": "error",
                "message": { "text": body(v) },
                "locations": [location],
                "properties": properties,
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "codex-runner",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rule_list,
                }
            },
            "originalUriBaseIds": {
                "SRCROOT": { "description": { "text": "The repository's working tree." } }
            },
            "results": results,
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let v = Violation::new(
            "requests/a,b.yaml",
            "invalid-timeout",
            "100% wrong:\nreally",
        )
        .at(Some((2, 10)))
        .hint("write `timeout: 5m`");
        Report {
            contract: vec![],
            files: vec![
                FileResult {
                    file: "requests/a,b.yaml".into(),
                    runs: None,
                    violations: vec![v],
                },
                FileResult {
                    file: "requests/ok.yaml".into(),
                    runs: Some("echo on echo".into()),
                    violations: vec![],
                },
            ],
        }
    }

    #[test]
    fn workflow_commands_are_escaped_as_github_documents() {
        let out = github(&report());
        assert_eq!(
            out.lines().next().unwrap(),
            "::error file=requests/a%2Cb.yaml,line=2,col=10,title=codex-runner%3A invalid-timeout::100%25 wrong:%0Areally%0Ahint: write `timeout: 5m`"
        );
        assert!(out.contains("ok   requests/ok.yaml (echo on echo)"));
    }

    #[test]
    fn the_summary_counts_and_tabulates() {
        let s = summary(&report());
        assert!(
            s.starts_with("### codex-runner: 1 of 2 requests would be rejected"),
            "{s}"
        );
        assert!(
            s.contains("| `requests/ok.yaml` | ✅ runs echo on echo |"),
            "{s}"
        );
        assert!(
            s.contains("**invalid-timeout** line 2: 100% wrong:<br>really — write `timeout: 5m`"),
            "{s}"
        );
    }

    #[test]
    fn sarif_names_rules_results_and_regions() {
        let s = sarif(&report());
        assert_eq!(s["version"], "2.1.0");
        let run = &s["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"][0]["id"], "invalid-timeout");
        let result = &run["results"][0];
        assert_eq!(result["ruleId"], "invalid-timeout");
        assert_eq!(
            result["locations"][0]["physicalLocation"]["region"]["startLine"],
            2
        );
        assert_eq!(result["properties"]["hint"], "write `timeout: 5m`");
    }

    #[test]
    fn json_carries_its_version() {
        let j = json(&report());
        assert_eq!(j["version"], JSON_VERSION);
        assert_eq!(j["valid"], false);
        assert_eq!(j["files"][1]["runs"], "echo on echo");
    }
}
