//! YAML errors in the writer's terms.
//!
//! serde-saphyr and its parser report what went wrong in their own terms: budget names,
//! policy options, scanner states, Rust type names. [`explain`] maps each kind of error to
//! what a writer did and how to fix it, using the text itself (the line, its indentation, the
//! first occurrence of a duplicated key). Nothing of the library's text passes through.
//!
//! PURE: an error and the text in, a violation out.

use serde_saphyr::granit_parser::ErrorKind as Scan;
use serde_saphyr::Error as E;

use super::words::{field_name, nearest};
use super::yaml::{nodes, path_at, MAX_DEPTH};
use super::Violation;

/// The violation for `e`, an error parsing `text` (the file `file`).
pub fn explain(file: &str, text: &str, e: &E) -> Violation {
    let pos = e.location().and_then(|l| {
        let (line, col) = (l.line() as usize, l.column() as usize);
        (line > 0).then_some((line, col.max(1)))
    });
    let line = pos.map_or(1, |p| p.0);
    let here = || field_name(&pos.map(|(l, c)| path_at(text, l, c)).unwrap_or_default());
    let v = |rule: &'static str, message: String| Violation::new(file, rule, message).at(pos);
    match e {
        E::AliasError { error, .. } | E::WithSnippet { error, .. } => explain(file, text, error),
        E::DuplicateMappingKey { key, .. } => {
            let key = key.clone().unwrap_or_else(|| "a key".into());
            let first = first_occurrence(text, &key, line);
            let message = match first {
                Some((l, _)) => format!("`{key}` appears twice in the same mapping (first on line {l})"),
                None => format!("`{key}` appears twice in the same mapping"),
            };
            v("duplicate-key", message)
                .saw("each key once", format!("`{key}` twice"))
                .hint(match first {
                    Some((l, _)) => format!("keep one of them: this line, or line {l}"),
                    None => "keep one of them".into(),
                })
        }
        E::MultipleDocuments { .. }
        | E::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Documents { .. },
            ..
        } => v(
            "multiple-documents",
            format!("a second YAML document starts on line {line} (after `---`); a request file holds one"),
        )
        .saw("one YAML document", "more than one")
        .hint("put each request in a file of its own, or remove the `---` line if it is left over"),
        E::Budget { breach, .. } => {
            use serde_saphyr::budget::BudgetBreach as B;
            match breach {
                B::Depth { .. } => v(
                    "too-complex",
                    format!("the values nest more than {MAX_DEPTH} levels deep"),
                )
                .hint(format!("flatten the structure to at most {MAX_DEPTH} levels")),
                B::Aliases { .. } | B::Anchors { .. } => alias(v("alias-limit", String::new())),
                _ => v(
                    "too-complex",
                    "the file holds more than 100,000 values".into(),
                )
                .hint("keep requests small; put bulky data behind a reference the handler fetches"),
            }
        }
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::RecursiveReferencesRequireWeakTypes { .. } => alias(v("alias-limit", String::new())),
        E::UnknownAnchor { .. } => v(
            "alias-limit",
            format!("line {line} refers to an anchor (`*name`) that nothing defines"),
        )
        .hint("write the value out instead of using `*`"),
        E::MergeKeyNotAllowed { .. } | E::MergeValueNotMapOrSeqOfMaps { .. } => v(
            "merge-key",
            "`<<` merges keys from elsewhere, which a request may not do".into(),
        )
        .hint("write the keys out where they belong"),
        E::NonFiniteFloat { value, .. } => {
            let what = match value.trim_start_matches(['+', '-']).to_ascii_lowercase().as_str() {
                ".nan" => "not a number (NaN)",
                ".inf" => "infinite",
                _ => "a number too large to hold",
            };
            v(
                "non-finite-number",
                format!("{} is `{value}`, {what}", here()),
            )
            .saw("a finite number", format!("`{value}`"))
            .hint(format!(
                "write a finite number, or quote it (`\"{value}\"`) if it is meant as text"
            ))
        }
        E::ExternalMessage { source, .. } => match &**source {
            serde_saphyr::ExternalMessageSource::Parser(scan) => {
                syntax(scan.kind(), text, line, v("yaml-syntax", String::new()))
            }
            _ => v("yaml-syntax", format!("line {line} cannot be read as YAML")),
        },
        E::Eof { .. } => v(
            "yaml-syntax",
            "the file ends in the middle of a value".into(),
        )
        .hint("finish the last value, or remove what is left of it"),
        E::SerdeUnknownField { field, expected, .. } => {
            let known: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            let place = holder(text, pos);
            let e = v("unknown-field", format!("{place} has no field `{field}`"))
                .saw(format!("one of {}", known.join(", ")), format!("`{field}`"));
            match nearest(field, &known) {
                Some(k) => e.hint(format!("did you mean `{k}`?")).suggest(k),
                None => e.hint(format!("allowed fields: {}", known.join(", "))),
            }
        }
        E::SerdeMissingField { field, .. } => {
            let place = holder(text, pos);
            v("missing-field", format!("{place} has no `{field}`, which is required"))
                .saw(format!("a `{field}:` field"), format!("no `{field}`"))
                .hint(format!("add `{field}:`"))
        }
        E::SerdeUnknownVariant { variant, expected, .. } => {
            let known: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            let e = v(
                "not-allowed-value",
                format!("{} must be one of {}; found `{variant}`", here(), known.join(", ")),
            )
            .saw(format!("one of {}", known.join(", ")), format!("`{variant}`"));
            match nearest(variant, &known) {
                Some(k) => e.hint(format!("did you mean `{k}`?")).suggest(k),
                None => e,
            }
        }
        E::InvalidScalar { ty, .. } => {
            let want = rust_type_words(ty);
            let found = scalar_at(text, pos);
            v(
                "wrong-type",
                format!("{} must be {want}; found `{found}`", here()),
            )
            .saw(want, format!("`{found}`"))
        }
        E::InvalidBooleanStrict { .. } => {
            let found = scalar_at(text, pos);
            let fixed = matches!(found.to_ascii_lowercase().as_str(), "yes" | "on" | "y" | "1");
            v(
                "wrong-type",
                format!("{} must be true or false; found `{found}`", here()),
            )
            .saw("true or false", format!("`{found}`"))
            .hint(format!("only `true` and `false` are booleans here: write `{fixed}`"))
            .suggest(fixed.to_string())
        }
        E::NullIntoString { .. } => v(
            "wrong-type",
            format!("{} is empty; it must be text", here()),
        )
        .saw("text", "nothing")
        .hint("give it a value, or remove the line"),
        E::Unexpected { expected, .. } => {
            let want = expected_words(expected);
            let found = node_at(text, pos);
            v(
                "wrong-type",
                format!("{} must be {want}; found {found}", here()),
            )
            .saw(want, found)
        }
        E::SerdeInvalidType { unexpected, expected, .. }
        | E::SerdeInvalidValue { unexpected, expected, .. } => {
            let want = expected_words(expected);
            let found = found_words(unexpected);
            v(
                "wrong-type",
                format!("{} must be {want}; found {found}", here()),
            )
            .saw(want, found)
        }
        E::SerdeInvalidLength { len, expected, .. } => v(
            "invalid-value",
            format!("{} has {len} items; it must have {}", here(), expected_words(expected)),
        ),
        // Our own deserializers' words (durations, sizes, names), already in the writer's terms.
        E::Message { msg, .. } => v("invalid-value", format!("{}: {}", here(), msg.trim())),
        _ => v(
            "yaml-syntax",
            format!("line {line} cannot be read as YAML"),
        )
        .hint("check the indentation and quoting of this line against the lines above it"),
    }
}

/// The mapping that holds the key at `pos`, as a writer names it ("the file" at the top).
/// An unknown field is reported at its key; a missing one at its mapping, where the mapping's
/// first key also is: either way the key's parent is the place.
fn holder(text: &str, pos: Option<(usize, usize)>) -> String {
    match pos.map(|(l, c)| path_at(text, l, c)) {
        Some(mut p) if p.len() > 1 => {
            p.pop();
            field_name(&p)
        }
        _ => "the file".to_string(),
    }
}

fn alias(v: Violation) -> Violation {
    Violation {
        message:
            "anchors and aliases (`&name`, `*name`) repeat values beyond what a request may hold"
                .into(),
        ..v
    }
    .hint("write the values out instead of using `&` and `*`")
}

/// A Rust type serde names, in the writer's words.
fn rust_type_words(ty: &str) -> String {
    match ty {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, zero or more".into(),
        "f32" | "f64" => "a number".into(),
        "bool" => "true or false".into(),
        "char" => "a single character".into(),
        "string" | "str" | "String" => "text".into(),
        _ => "a value of another kind".into(),
    }
}

/// What serde's visitors say they expected (`a string`, `struct HandlerEntry`, `u64`), in
/// the writer's words.
fn expected_words(expected: &str) -> String {
    let e = expected.trim();
    if e.starts_with("struct ") || e == "a map" || e.contains("mapping") || e == "map" {
        return "a mapping of names to values".into();
    }
    if e.contains("sequence") || e.contains("seq") || e.contains("list") {
        return "a list".into();
    }
    if e.contains("string") || e.contains("str") {
        return "text".into();
    }
    if e.contains("bool") {
        return "true or false".into();
    }
    if e.contains("float") || e.starts_with('f') && e[1..].parse::<u8>().is_ok() {
        return "a number".into();
    }
    if e.contains("integer") || e.starts_with(['i', 'u']) && e[1..].parse::<u8>().is_ok() {
        return "a whole number".into();
    }
    if e.starts_with("enum ") || e.contains("variant") {
        return "one of the allowed names".into();
    }
    // Our own `expecting` texts are already in the writer's words.
    if e.contains("::") || e.chars().next().is_some_and(char::is_uppercase) {
        return "a value of another kind".into();
    }
    e.to_string()
}

/// What serde says it found (`string "x"`, `integer 5`, `map`, `sequence`), in words.
fn found_words(unexpected: &str) -> String {
    let u = unexpected.trim();
    for (prefix, words) in [
        ("string ", "the text "),
        ("integer ", "the number "),
        ("floating point ", "the number "),
        ("boolean ", ""),
    ] {
        if let Some(rest) = u.strip_prefix(prefix) {
            return format!("{words}`{}`", rest.trim_matches('`').trim_matches('"'));
        }
    }
    match u {
        "map" => "a mapping".into(),
        "sequence" => "a list".into(),
        "unit value" | "null" => "nothing".into(),
        _ if u.contains("::") => "a value of another kind".into(),
        _ => u.to_string(),
    }
}

/// What starts at `pos`, in words: a list, a mapping, or the scalar's text.
fn node_at(text: &str, pos: Option<(usize, usize)>) -> String {
    let s = scalar_at(text, pos);
    match s.chars().next() {
        Some('[') | Some('-') => "a list".into(),
        Some('{') => "a mapping".into(),
        None => "nothing".into(),
        _ => format!("`{s}`"),
    }
}

/// The scalar text at `pos`, up to the end of its line or a comment.
fn scalar_at(text: &str, pos: Option<(usize, usize)>) -> String {
    let Some((line, col)) = pos else {
        return String::new();
    };
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let before: String = l.chars().take(col.saturating_sub(1)).collect();
    let rest: String = l.chars().skip(col.saturating_sub(1)).collect();
    let mut rest = rest.split(" #").next().unwrap_or("");
    // Inside `{…}` or `[…]` a value ends at the next separator.
    if before.contains(['{', '[']) {
        rest = rest.split([',', '}', ']']).next().unwrap_or("");
    }
    rest.trim().chars().take(60).collect()
}

/// The line and column where `key` first appears as a key of the mapping that holds it again
/// on `dup_line`.
fn first_occurrence(text: &str, key: &str, dup_line: usize) -> Option<(usize, usize)> {
    // The first position of each (mapping, key), the mapping named by its path.
    let mut seen: Vec<(Vec<String>, (usize, usize))> = Vec::new();
    for n in nodes(text).filter(|n| n.key && n.path.last().is_some_and(|k| k == key)) {
        if n.pos.0 == dup_line {
            return seen.iter().find(|(p, _)| *p == n.path).map(|(_, pos)| *pos);
        }
        if !seen.iter().any(|(p, _)| *p == n.path) {
            seen.push((n.path, n.pos));
        }
    }
    None
}

/// Leading spaces of a line.
fn indent(l: &str) -> usize {
    l.len() - l.trim_start_matches(' ').len()
}

fn is_content(l: &str) -> bool {
    let t = l.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The key a line starts with (`sleep` in `   sleep: 1`), if any.
fn key_of(l: &str) -> Option<&str> {
    let t = l.trim_start().trim_start_matches("- ");
    let (k, _) = t.split_once(':')?;
    (!k.is_empty() && !k.contains(char::is_whitespace)).then_some(k)
}

/// A parser error, from the text around `line`.
fn syntax(kind: &Scan, text: &str, line: usize, v: Violation) -> Violation {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.saturating_sub(1)).copied().unwrap_or("");
    let with = |message: String| Violation {
        message,
        ..v.clone()
    };
    match kind {
        Scan::TabInIndentation
        | Scan::TabInBlockIndentation
        | Scan::TabNotAllowed
        | Scan::TabInPlainScalar
        | Scan::TabAtBlockScalarStart => {
            let tab_line = if this.contains('\t') {
                line
            } else {
                lines.iter().position(|l| l.contains('\t')).map_or(line, |i| i + 1)
            };
            let tab_col = lines
                .get(tab_line - 1)
                .and_then(|l| l.chars().position(|c| c == '\t'))
                .map(|c| c + 1);
            Violation {
                rule: "yaml-tab".into(),
                line: Some(tab_line),
                column: tab_col,
                ..with(format!(
                    "line {tab_line} has a tab character; YAML indents and separates with spaces only"
                ))
            }
            .saw("spaces", "a tab")
            .hint("replace the tab with spaces (set your editor to insert spaces for YAML)")
        }
        Scan::UnclosedQuotedScalar | Scan::DocumentIndicatorInQuotedScalar => {
            let open = lines[..line.min(lines.len())]
                .iter()
                .rposition(|l| l.matches('"').count() % 2 == 1 || l.matches('\'').count() % 2 == 1)
                .map_or(line, |i| i + 1);
            let quote = if lines
                .get(open - 1)
                .is_some_and(|l| l.matches('"').count() % 2 == 1)
            {
                '"'
            } else {
                '\''
            };
            let fixed = format!("{}{quote}", lines.get(open - 1).copied().unwrap_or("").trim_end());
            Violation {
                line: Some(open),
                column: Some(1),
                ..with(format!(
                    "the quoted value that starts on line {open} is never closed"
                ))
            }
            .saw(format!("a closing {quote}"), "the end of the file")
            .hint(format!("end it with {quote} on the same line: `{}`", fixed.trim_start()))
            .suggest(fixed)
        }
        Scan::UnclosedFlowCollection { open } => {
            let close = if *open == '[' { ']' } else { '}' };
            let at = lines
                .iter()
                .rposition(|l| l.contains(*open))
                .map_or(line, |i| i + 1);
            Violation {
                line: Some(at),
                column: None,
                ..with(format!("the `{open}` on line {at} is never closed"))
            }
            .saw(format!("a closing `{close}`"), "the end of the file")
            .hint(format!("add `{close}` where the list or mapping ends"))
        }
        Scan::MismatchedFlowCollectionEnd { open, close } => with(format!(
            "line {line} closes with `{close}` what was opened with `{open}`"
        ))
        .hint(format!(
            "close `[` with `]` and `{{` with `}}`; here `{}` was meant",
            if *open == '[' { ']' } else { '}' }
        )),
        Scan::ExpectedFlowMappingSeparator | Scan::ExpectedFlowSequenceSeparator => {
            let (open, close) = if matches!(kind, Scan::ExpectedFlowMappingSeparator) {
                ('{', '}')
            } else {
                ('[', ']')
            };
            let long = if this.chars().count() > 1024 {
                " (a key may be at most 1024 characters long)"
            } else {
                ""
            };
            with(format!(
                "line {line}: inside `{open}…{close}` items are separated by `,` and it ends with `{close}`, but something else follows{long}"
            ))
            .hint(format!("add the missing `,` or `{close}`, or quote a value that holds `,`, `{open}` or `{close}`"))
        }
        Scan::UnexpectedEofFlowSequence
        | Scan::UnexpectedEofFlowMapping
        | Scan::UnexpectedEofImplicitFlowMapping => with(
            "the file ends inside a `[…]` or `{…}` that is never closed".into(),
        )
        .hint("close every `[` with `]` and every `{` with `}`"),
        Scan::MappingValueNotAllowed
        | Scan::InvalidIndentation
        | Scan::ExpectedBlockMappingKey
        | Scan::ExpectedBlockSequenceEntry
        | Scan::SimpleKeyExpected
        | Scan::InvalidSimpleKey
        | Scan::BlockSequenceEntryNotAllowed
        | Scan::MappingKeyNotAllowed
        | Scan::ExpectedNodeContent => indentation(&lines, line, v),
        Scan::UnexpectedCharacter { character } if character.is_control() => with(format!(
            "line {line} has a control character (U+{:04X}), which YAML does not allow as it is",
            u32::from(*character)
        ))
        .saw("printable text", format!("U+{:04X}", u32::from(*character)))
        .hint("remove it, or write it as an escape inside double quotes, such as \"\\u001b\""),
        Scan::UnexpectedCharacter { character } => with(format!(
            "line {line} starts a value with `{character}`, which YAML reserves"
        ))
        .hint(format!("quote the value: `\"{}\"`", this.split_once(": ").map_or(this.trim(), |(_, r)| r.trim()))),
        Scan::UnknownQuotedScalarEscape
        | Scan::InvalidQuotedScalarHexEscape
        | Scan::InvalidUnicodeEscape => with(format!(
            "line {line} has a backslash escape that double quotes do not know"
        ))
        .hint("write `\\\\` for a backslash inside double quotes, or use single quotes, which take backslashes as they are"),
        Scan::RecursionLimitExceeded => Violation {
            rule: "too-complex".into(),
            ..with(format!("the values nest more than {MAX_DEPTH} levels deep"))
        }
        .hint(format!("flatten the structure to at most {MAX_DEPTH} levels")),
        Scan::CommentNotSeparated => with(format!(
            "line {line} has `#` right after a value; a comment needs a space before `#`"
        ))
        .hint("put a space before `#`, or quote the value if `#` is part of it"),
        _ => with(format!("line {line} cannot be read as YAML"))
            .hint("check the indentation and quoting of this line against the lines above it"),
    }
}

/// A structure error on `line`: what its indentation lines up with, and what it should.
fn indentation(lines: &[&str], line: usize, v: Violation) -> Violation {
    let idx = line.saturating_sub(1).min(lines.len().saturating_sub(1));
    let this = lines.get(idx).copied().unwrap_or("");
    let ind = indent(this);
    // Column 1: a suggestion here replaces the whole line.
    let with = |message: String| Violation {
        rule: "yaml-indentation".into(),
        message,
        column: Some(1),
        ..v.clone()
    };
    // Two `key: value` pairs on one line.
    let unquoted: String = this.split(['"', '\'']).step_by(2).collect();
    if unquoted.matches(": ").count() + usize::from(unquoted.trim_end().ends_with(':')) > 1
        && !unquoted.trim_start().starts_with('{')
    {
        return Violation {
            rule: "yaml-syntax".into(),
            ..with(format!(
                "line {line} holds two `key: value` pairs; each goes on a line of its own"
            ))
        }
        .hint(
            "break the line after the first value, or quote the value if its `: ` is part of it",
        );
    }
    // The line above with content, and the chain of keys it sits under.
    let Some(prev) = (0..idx).rev().find(|&i| is_content(lines[i])) else {
        return with(format!(
            "line {line} is indented where nothing opens a block"
        ))
        .hint("start the file at column 1");
    };
    let prev_line = lines[prev];
    let prev_ind = indent(prev_line);
    let prev_key = key_of(prev_line);
    let this_key = key_of(this).unwrap_or("this line");
    let opens_block = prev_line.trim_end().ends_with(':');
    if ind > prev_ind && !opens_block {
        let fixed = format!("{}{}", " ".repeat(prev_ind), this.trim_start());
        let like = prev_key.map_or(String::new(), |k| format!(" like `{k}:`"));
        return with(format!(
            "line {line} is indented {ind} spaces, more than line {} above it ({prev_ind}), which already has a value",
            prev + 1
        ))
        .saw(format!("{prev_ind} spaces{like}"), format!("{ind} spaces"))
        .hint(format!("indent `{this_key}:`{like}: {prev_ind} spaces"))
        .suggest(fixed);
    }
    // Indentations of the blocks this line could belong to, innermost first.
    let mut levels: Vec<(usize, usize)> = Vec::new(); // (indent, line index)
    let mut limit = usize::MAX;
    for i in (0..idx).rev() {
        let l = lines[i];
        if !is_content(l) {
            continue;
        }
        let n = indent(l);
        if n < limit {
            levels.push((n, i));
            limit = n;
        }
        if n == 0 {
            break;
        }
    }
    if !levels.iter().any(|(n, _)| *n == ind) {
        if let Some(&(n, i)) = levels
            .iter()
            .min_by_key(|(n, _)| (n.abs_diff(ind), usize::MAX - n))
        {
            let fixed = format!("{}{}", " ".repeat(n), this.trim_start());
            let like = key_of(lines[i])
                .map_or(String::new(), |k| format!(" like `{k}:` on line {}", i + 1));
            return with(format!(
                "line {line} is indented {ind} spaces, which lines up with no key above it"
            ))
            .saw(
                format!(
                    "{} spaces",
                    levels
                        .iter()
                        .map(|(n, _)| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                format!("{ind} spaces"),
            )
            .hint(format!("indent `{this_key}:`{like}: {n} spaces"))
            .suggest(fixed);
        }
    }
    with(format!(
        "line {line} does not fit the structure above it: a `key: value` or `- item` is out of place"
    ))
    .hint("keys of one mapping line up at the same indentation; a key with nested fields ends with `:`")
}

#[cfg(test)]
mod tests {
    use super::super::yaml::parse;

    fn err(text: &str) -> super::Violation {
        parse::<serde_json::Value>("f.yaml", text).unwrap_err()
    }

    #[test]
    fn a_duplicate_key_names_its_first_line_in_the_same_mapping() {
        let v = err("kind: a\nparams:\n  kind: b\n  x: 1\n  x: 2\nkind: c\n");
        // `params.x` is the first duplicate the parser meets.
        assert_eq!(
            (v.line, v.message.as_str()),
            (
                Some(5),
                "`x` appears twice in the same mapping (first on line 4)"
            )
        );
        let v = err("a: {k: 1}\nk: 2\nk: 3\n");
        assert!(v.message.ends_with("(first on line 2)"), "{v}");
    }

    #[test]
    fn indentation_says_what_the_line_lines_up_with() {
        let v = err("a:\n  b: 1\n   c: 2\n");
        assert_eq!(v.rule, "yaml-indentation");
        assert_eq!(v.suggestion.as_deref(), Some("  c: 2"));
        let v = err("a:\n    b: 1\n  c: 2\n");
        assert_eq!(v.rule, "yaml-indentation");
        assert_eq!(v.suggestion.as_deref(), Some("    c: 2"));
        let v = err("a: 1 b: 2\n");
        assert!(v.message.contains("two `key: value` pairs"), "{v}");
    }

    #[test]
    fn tabs_quotes_brackets_and_control_characters_are_named() {
        assert_eq!(err("a: 1\n\tb: 2\n").rule, "yaml-tab");
        let v = err("a: \"open\n");
        assert_eq!(
            (v.line, v.suggestion.as_deref()),
            (Some(1), Some("a: \"open\""))
        );
        assert!(err("a: [1, 2\n").message.contains("never closed"));
        assert!(err("a: \u{1b}x\n").message.contains("U+001B"));
        assert!(err("a: 1\n---\nb: 2\n")
            .message
            .contains("second YAML document starts on line 2"));
        assert!(err("a: .nan\n").message.contains("not a number"));
    }

    #[test]
    fn typed_files_say_fields_and_types_in_words() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Limits {
            pids: i64,
            on: bool,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct F {
            limits: Limits,
        }
        let e = |t: &str| parse::<F>("f.yaml", t).unwrap_err();
        let v = e("limits: {pids: x, on: true}\n");
        assert_eq!(v.message, "`limits.pids` must be a whole number; found `x`");
        let v = e("limits: {pids: 1, on: yes}\n");
        assert_eq!(v.suggestion.as_deref(), Some("true"), "{v}");
        let v = e("limits: {pids: 1, on: true, pid: 2}\n");
        assert_eq!(
            (v.rule.as_ref(), v.hint.as_deref()),
            ("unknown-field", Some("did you mean `pids`?"))
        );
        let v = e("limits: {on: true}\n");
        assert_eq!(v.message, "`limits` has no `pids`, which is required");
    }
}
