//! The editor schemas: what `codex-runner schema request|index|repo` prints is the file the
//! editors read, every field the runner's parser knows is in it (and nothing else), and every
//! template file and documented example passes it in an independent validator
//! (check-jsonschema, which is python-jsonschema; not the library the runner uses).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::action::{check_jsonschema, succeeded, tools};
use crate::common::root;

fn codex(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_codex-runner"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

const SCHEMAS: [(&str, &str); 3] = [
    ("request", "src/contract/request.schema.json"),
    ("index", "src/contract/index.schema.json"),
    ("repo", "src/contract/repo.schema.json"),
];

fn schema(name: &str) -> Value {
    let (_, path) = SCHEMAS.iter().find(|(n, _)| *n == name).unwrap();
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

/// Every `title`/`description` a schema gives its properties, recursively: none is missing.
fn undocumented(node: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let here = format!("{at}.{k}");
            let resolved = v;
            if resolved.get("description").is_none() {
                out.push(format!("{here}: no description"));
            }
            if resolved.get("title").is_none() {
                out.push(format!("{here}: no title"));
            }
            undocumented(v, &here, out);
        }
    }
    if let Some(defs) = node.get("$defs").and_then(Value::as_object) {
        for (k, v) in defs {
            undocumented(v, &format!("{at}$defs.{k}"), out);
        }
    }
}

#[test]
fn the_printed_schemas_are_the_files_editors_read_and_document_every_field() {
    let mut missing = Vec::new();
    for (name, path) in SCHEMAS {
        let file = std::fs::read_to_string(root().join(path)).unwrap();
        assert_eq!(
            codex(&["schema", name]).trim_end(),
            file.trim_end(),
            "{name}"
        );
        let s: Value = serde_json::from_str(&file).unwrap();
        assert!(
            s["$id"]
                .as_str()
                .unwrap()
                .starts_with("urn:codex-runner:schema:"),
            "{name}: a stable $id"
        );
        assert!(
            s["title"].is_string() && s["description"].is_string(),
            "{name}"
        );
        undocumented(&s, name, &mut missing);
    }
    // The request's own fields also show examples.
    let request = schema("request");
    for (k, v) in request["properties"].as_object().unwrap() {
        assert!(v.get("examples").is_some(), "request.{k}: no examples");
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// The fields the runner's parser accepts where `bogus` is placed, from its own "allowed
/// fields" hint.
fn parser_fields(
    parse: impl Fn(&str) -> Vec<codex_runner::contract::Violation>,
    text: &str,
) -> BTreeSet<String> {
    let v = parse(text);
    let v = v
        .iter()
        .find(|v| v.rule == "unknown-field")
        .unwrap_or_else(|| panic!("no unknown-field for:\n{text}\n{v:?}"));
    let hint = v.hint.as_deref().unwrap();
    let list = hint
        .strip_prefix("allowed fields: ")
        .unwrap_or_else(|| panic!("{hint}"));
    list.split(", ").map(str::to_string).collect()
}

fn keys(node: &Value) -> BTreeSet<String> {
    node["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_schemas_name_exactly_the_fields_the_runner_reads() {
    use codex_runner::contract::handlers::HandlerIndex;
    use codex_runner::contract::repo_config::RepoConfig;
    let index = |t: &str| HandlerIndex::parse(t.as_bytes()).unwrap_err().0;
    let repo = |t: &str| RepoConfig::parse(t.as_bytes()).unwrap_err().0;
    let index_schema = schema("index");
    let repo_schema = schema("repo");
    let cases = [
        (
            parser_fields(
                index,
                "handlers:\n  a:\n    run: handlers/a.sh\n    zzz: 1\n",
            ),
            keys(&index_schema["$defs"]["handler"]),
            "a handler entry",
        ),
        (
            parser_fields(
                index,
                "handlers:\n  a:\n    run: handlers/a.sh\n    limits: {zzz: 1}\n",
            ),
            keys(&index_schema["$defs"]["handler"]["properties"]["limits"]),
            "limits",
        ),
        (
            parser_fields(index, "zzz: 1\nhandlers: {}\n"),
            keys(&index_schema),
            "the index",
        ),
        (
            parser_fields(
                repo,
                "repo: {purpose: x, strategy: git-merge-execution, zzz: 1}\n",
            ),
            keys(&repo_schema["properties"]["repo"]),
            "repo",
        ),
        (
            parser_fields(
                repo,
                "repo: {purpose: x, strategy: git-merge-execution}\ncodex: {zzz: 1}\n",
            ),
            keys(&repo_schema["properties"]["codex"]),
            "codex",
        ),
        (
            parser_fields(repo, "zzz: 1\n"),
            keys(&repo_schema),
            "codex.repo.yaml",
        ),
    ];
    for (parser, schema, what) in cases {
        assert_eq!(
            parser, schema,
            "{what}: the parser's fields against the schema's"
        );
    }
}

/// The YAML blocks of a Markdown file, dedented by their fence's indentation.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in markdown.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        match &mut current {
            None if t == "```yaml" => current = Some((indent, String::new())),
            Some((_, block)) if t == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some((fence, block)) => {
                block.push_str(line.get(*fence..).unwrap_or(t));
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Validate `files` against `schema` with check-jsonschema.
fn independent(schema: &str, files: &[PathBuf]) {
    let path = root().join(schema).display().to_string();
    succeeded(schema, &check_jsonschema("--schemafile", &path, files));
}

#[test]
fn every_template_file_and_documented_example_passes_an_independent_validator() {
    tools();
    let dir = tempfile::tempdir().unwrap();
    let mut requests = Vec::new();
    let mut indexes = vec![root().join("handlers/index.yml")];
    let mut repos = vec![root().join("codex.repo.yaml")];
    let mut with_modeline = 0;
    for doc in ["README.codex.md", "README.md", "action/README.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for (i, block) in yaml_blocks(&text).into_iter().enumerate() {
            let value: Value = match serde_saphyr::from_str(&block) {
                Ok(v) => v,
                Err(_) => continue, // fragments that show a shape, not a file
            };
            let which = if value.get("handlers").is_some() {
                &mut indexes
            } else if value.get("repo").is_some() {
                &mut repos
            } else if value.get("kind").is_some() {
                &mut requests
            } else {
                continue;
            };
            if block.contains("# yaml-language-server: $schema=") {
                with_modeline += 1;
            }
            let path = dir
                .path()
                .join(format!("{}-{i}.yaml", doc.replace('/', "-")));
            std::fs::write(&path, &block).unwrap();
            which.push(path);
        }
    }
    assert!(requests.len() >= 4, "the documented requests: {requests:?}");
    assert!(indexes.len() >= 2 && repos.len() >= 2);
    assert!(
        with_modeline >= 6,
        "the documented examples carry the yaml-language-server modeline ({with_modeline})"
    );
    for file in ["handlers/index.yml", "codex.repo.yaml"] {
        let first = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(
            first.starts_with("# yaml-language-server: $schema="),
            "{file} names its schema on its first line"
        );
    }
    independent("src/contract/request.schema.json", &requests);
    independent("src/contract/index.schema.json", &indexes);
    independent("src/contract/repo.schema.json", &repos);

    // And the ordinary mistakes the schema can see are caught by it too.
    let caught: Vec<PathBuf> = [
        "timeout-negative.yaml",
        "timeout-in-words.yaml",
        "kind-uppercase.yaml",
        "runs-on-string.yaml",
        "params-list.yaml",
        "id-129-characters.yaml",
        "field-typo.yaml",
    ]
    .iter()
    .map(|f| root().join("tests/corpus/mistakes").join(f))
    .collect();
    let schema = root().join("src/contract/request.schema.json");
    for file in caught {
        let out = check_jsonschema(
            "--schemafile",
            schema.to_str().unwrap(),
            std::slice::from_ref(&file),
        );
        assert!(
            !out.status.success(),
            "{} passed the schema",
            file.display()
        );
    }
}
