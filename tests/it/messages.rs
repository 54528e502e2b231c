//! Messages in the writer's terms: every rejection says what was expected, what was found and
//! how to fix it, in words a person or an agent can act on. Checked in-process through the
//! planner, on the ordinary mistakes of `tests/corpus/mistakes` and the hostile corpus.

use codex_runner::contract::handlers::HandlerIndex;
use codex_runner::contract::Violation;
use codex_runner::plan::{plan, Action, Done, EntryContent, InboxEntry};

use crate::common::root;

/// Words that belong to a library, a type or a debug print, never to a message.
const INTERNAL: &[&str] = &[
    "DuplicateKeyPolicy",
    "Options",
    "budget",
    "Budget",
    "Documents {",
    "oneOf",
    "anyOf",
    "allOf",
    "keyword",
    "schemas listed",
    "configured policy",
    "Some(",
    "None",
    "Error",
    "serde",
    "saphyr",
    "jsonschema",
    "granit",
    "scalar",
    "i64",
    "u64",
    "u32",
    "usize",
    "f64",
    "struct ",
    "error: line",
    " column ",
    "::",
    "Marker",
    "\\u{",
    "value is not",
    "is not of type",
    "does not match \"^",
    "Additional properties",
];

/// Every violation the planner gives each file of `dir`, with the template's handlers.
fn rejections(dir: &str) -> Vec<(String, Vec<Violation>)> {
    let index =
        HandlerIndex::parse(&std::fs::read(root().join("handlers/index.yml")).unwrap()).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let entries: Vec<InboxEntry> = files
        .iter()
        .enumerate()
        .map(|(i, f)| InboxEntry {
            path: format!("requests/{f}"),
            content: EntryContent::Blob(std::fs::read(root().join(dir).join(f)).unwrap()),
            object: format!("{i:040x}"),
            commit: ("c0ffee".repeat(6) + "c0ff").parse().expect("a commit id"),
            order: i,
            code_changes: Vec::new(),
        })
        .collect();
    plan(&entries, |_| Ok(&index), |_| Done::No)
        .items
        .into_iter()
        .map(|item| match item.action {
            Action::Reject(v) => (item.file, v),
            Action::Run(_) => (item.file, Vec::new()),
        })
        .collect()
}

fn internal_words(v: &Violation) -> Vec<&'static str> {
    let text = [
        v.message.as_str(),
        v.hint.as_deref().unwrap_or_default(),
        v.expected.as_deref().unwrap_or_default(),
        v.found.as_deref().unwrap_or_default(),
    ]
    .join("\n");
    INTERNAL
        .iter()
        .copied()
        .filter(|w| text.contains(w))
        .collect()
}

#[test]
fn ordinary_mistakes_are_told_what_was_expected_found_and_how_to_fix_it() {
    let expected = std::fs::read_to_string(root().join("tests/corpus/mistakes.expected")).unwrap();
    let got = rejections("tests/corpus/mistakes");
    let mut checked = 0;
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 5, "bad line in mistakes.expected: {line}");
        let (file, rule, at, hint, suggestion) = (cols[0], cols[1], cols[2], cols[3], cols[4]);
        let path = format!("requests/{file}");
        let (_, violations) = got
            .iter()
            .find(|(f, _)| *f == path)
            .unwrap_or_else(|| panic!("{file} was not planned"));
        let v = violations
            .first()
            .unwrap_or_else(|| panic!("{file} was accepted"));
        assert_eq!(v.rule, rule, "{file}: {v}");
        assert_eq!(v.line, at.parse().ok(), "{file}: {v}");
        assert!(
            v.hint.as_deref().unwrap_or_default().contains(hint),
            "{file}: the hint should say `{hint}`:\n{v}"
        );
        let want = (suggestion != "-").then_some(suggestion);
        assert_eq!(v.suggestion.as_deref(), want, "{file}: {v}");
        // The rule's own words: what it takes and what it got, for every rule whose value
        // can be named.
        if !matches!(rule, "yaml-syntax") {
            assert!(
                v.expected.is_some() && v.found.is_some(),
                "{file}: expected and found: {v:?}"
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        got.len(),
        "every file in tests/corpus/mistakes is listed in mistakes.expected"
    );
}

#[test]
fn no_message_shows_a_library_type_option_or_debug_output() {
    let mut seen = 0;
    for dir in ["tests/corpus/mistakes", "tests/corpus/requests"] {
        for (file, violations) in rejections(dir) {
            for v in &violations {
                let words = internal_words(v);
                assert!(words.is_empty(), "{file}: {words:?} in\n{v}");
                assert!(
                    codex_runner::contract::rules::RULES
                        .iter()
                        .any(|(r, _)| *r == v.rule),
                    "{file}: rule `{}` is not in contract::rules::RULES",
                    v.rule
                );
                // A position is said once, by the file:line:column in front.
                let m = &v.message;
                assert!(
                    !(m.contains("line ") && m.contains("column")),
                    "{file}: doubled position: {m}"
                );
                let hint = v.hint.as_deref().unwrap_or_default();
                assert!(!hint.is_empty(), "{file}: no hint: {v}");
                assert!(
                    !hint.starts_with("see the request"),
                    "{file}: a hint that only points at the schema: {v}"
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 90, "only {seen} violations checked");
}

#[test]
fn the_handler_index_and_the_repo_config_are_told_in_the_same_words() {
    use codex_runner::contract::repo_config::RepoConfig;
    let index = [
        "handlers:\n  echo:\n    run: handlers/echo.sh\n    image: x\n    timout: 5m\n",
        "handlers:\n  echo:\n    run: handlers/echo.sh\n    image: x\n    timeout: [5]\n",
        "handlers:\n  echo:\n    run: handlers/echo.sh\n    image: x\n    limits: {pids: many}\n",
        "handlers:\n  echo:\n    image: x\n",
        "handlers:\n  echo:\n    run: handlers/echo.sh\n    image: x\n    network: bridge\n",
        "handlers: [echo]\n",
        "- echo\n",
        "handlers:\n  echo:\n    run: handlers/echo.sh\n     image: x\n",
    ];
    let config = [
        "codex:\n  trigger_path: requests/\n",
        "codex:\n  max_attempts: lots\n",
        "codex:\n  enforce_merge_before_execution: maybe\n",
        "version: 2\n",
        "codex: [1]\n",
    ];
    let mut checked = 0;
    for text in index {
        let err = HandlerIndex::parse(text.as_bytes()).unwrap_err();
        for v in &err.0 {
            assert_eq!(v.file, "handlers/index.yml");
            assert!(v.line.is_some(), "{v}");
            let words = internal_words(v);
            assert!(words.is_empty(), "{words:?} in\n{v}");
            checked += 1;
        }
    }
    for text in config {
        let err = RepoConfig::parse(text.as_bytes()).unwrap_err();
        for v in &err.0 {
            assert_eq!(v.file, "codex.repo.yaml");
            let words = internal_words(v);
            assert!(words.is_empty(), "{words:?} in\n{v}");
            checked += 1;
        }
    }
    assert!(checked >= index.len() + config.len());
}
