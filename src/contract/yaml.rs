//! YAML loading with hard limits, and positions for JSON-pointer paths.
//!
//! serde-saphyr enforces the budget (nesting, alias replay, node count) and rejects duplicate
//! keys; this module adds the file-level rules (size, UTF-8, BOM) and maps a JSON pointer back
//! to the line and column it came from, so schema errors can point into the file.

use granit_parser::{Event, Parser};
use serde::de::DeserializeOwned;

use super::Violation;

/// Largest request or contract file accepted.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 32;

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_documents: 1,
            max_nodes: 100_000,
            max_aliases: 64,
            max_anchors: 64,
        },
        // `yes` and `on` are not booleans: only true and false are.
        strict_booleans: true,
        // `<<: *base` pulls in keys a reader of the mapping does not see.
        merge_keys: serde_saphyr::MergeKeyPolicy::Error,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 10_000,
            max_replay_stack_depth: 8,
            max_alias_expansions_per_anchor: 64,
        },
    }
}

/// Check the raw bytes of a file and return its text.
// A violation is built once per bad file, never on a hot path: its size does not matter.
#[allow(clippy::result_large_err)]
pub fn text<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, Violation> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Violation::new(
            file,
            "file-too-large",
            format!(
                "file is {} bytes, more than the {} allowed",
                bytes.len(),
                MAX_FILE_BYTES
            ),
        )
        .hint("keep requests small; put bulky data behind a reference the handler fetches"));
    }
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(
            Violation::new(file, "bom", "file starts with a UTF-8 byte-order mark")
                .at(Some((1, 1)))
                .hint("save the file as UTF-8 without BOM"),
        );
    }
    if let Some(v) = utf16(file, bytes) {
        return Err(v);
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let col = good.len() - good.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
        let byte = bytes[e.valid_up_to()];
        Violation::new(
            file,
            "not-utf8",
            format!("line {line} has the byte 0x{byte:02X}, which is not UTF-8 text"),
        )
        .at(Some((line, col)))
        .saw(
            "UTF-8 text",
            "another encoding (such as Latin-1 or Windows-1252)",
        )
        .hint("save the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`)")
    })
}

/// A file in UTF-16, by its byte-order mark or by the zero bytes ASCII text has in it.
#[allow(clippy::result_large_err)]
fn utf16(file: &str, bytes: &[u8]) -> Option<Violation> {
    let head = &bytes[..bytes.len().min(64)];
    let zeros_at = |parity: usize| {
        head.len() >= 4
            && head.iter().skip(parity).step_by(2).all(|b| *b == 0)
            && head.iter().skip(1 - parity).step_by(2).any(|b| *b != 0)
    };
    let endian = if bytes.starts_with(&[0xFF, 0xFE]) || zeros_at(1) {
        "little-endian"
    } else if bytes.starts_with(&[0xFE, 0xFF]) || zeros_at(0) {
        "big-endian"
    } else {
        return None;
    };
    Some(
        Violation::new(
            file,
            "not-utf8",
            format!("the file is UTF-16 ({endian}) text; requests are UTF-8"),
        )
        .at(Some((1, 1)))
        .saw("UTF-8 text", format!("UTF-16 ({endian})"))
        .hint("save it as UTF-8 without a byte-order mark (e.g. `iconv -f UTF-16 -t UTF-8`; Windows PowerShell 5 writes UTF-16 with `>`)"),
    )
}

/// Parse YAML text into `T` under the budget; errors carry the position serde-saphyr knows.
/// Explicit tags (`!!binary`, `!!python/object`, `!custom`) are refused: they change what a
/// value means in a way a reviewer reading the file does not see.
#[allow(clippy::result_large_err)]
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Violation> {
    let value = serde_saphyr::from_str_with_options::<T>(text, options())
        .map_err(|e| super::yaml_words::explain(file, text, &e))?;
    // Within budget, so walking the events is bounded (aliases are not expanded here).
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else { break };
        let tag = match &event {
            Event::Scalar(_, _, _, tag)
            | Event::SequenceStart(_, _, tag)
            | Event::MappingStart(_, _, tag) => tag.as_ref(),
            _ => None,
        };
        if let Some(tag) = tag {
            return Err(Violation::new(
                file,
                "yaml-tag",
                format!(
                    "explicit YAML tag `{}{}` is not allowed",
                    tag.original_handle(),
                    tag.suffix()
                ),
            )
            .at(Some((span.start.line(), span.start.col() + 1)))
            .hint("write plain values; a tag changes what a value means where a reviewer cannot see it"));
        }
    }
    Ok(value)
}

/// One step of a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Split a JSON pointer (`/params/hosts/0`) into steps.
pub fn pointer_steps(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// The path of the node at 1-based `line` and `column` (or the last one starting before it).
///
/// Only called on YAML that failed to parse, so the walk stops at the first parser error.
pub fn path_at(text: &str, line: usize, column: usize) -> Vec<String> {
    nodes(text)
        .take_while(|n| n.pos <= (line, column))
        .last()
        .map(|n| n.path)
        .unwrap_or_default()
}

/// Position (1-based line, column) of the node at `path`; with `key`, of the mapping key itself.
///
/// Only called on YAML that already parsed within budget, so walking its events is bounded.
pub fn locate(text: &str, path: &[String], key: bool) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    let mut best_len = 0usize;
    for n in nodes(text) {
        let shared = prefix_len(&n.path, path);
        if n.key {
            if key && n.path.as_slice() == path {
                return Some(n.pos);
            }
            if shared > best_len {
                best_len = shared;
                best = Some(n.pos);
            }
        } else {
            if !key && n.path.as_slice() == path {
                return Some(n.pos);
            }
            if shared >= best_len && best.is_none() {
                best = Some(n.pos);
            }
        }
    }
    best
}

/// One node of a YAML text: where it is in the document and in the text.
pub(super) struct Node {
    /// Its path from the root; a mapping key's path ends with the key itself.
    pub path: Vec<String>,
    /// Whether it is a mapping key.
    pub key: bool,
    /// 1-based line and column where it starts.
    pub pos: (usize, usize),
}

/// Every node of `text` in order, up to the first parser error.
pub(super) fn nodes(text: &str) -> impl Iterator<Item = Node> + '_ {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    std::iter::from_fn(move || loop {
        let (event, span) = parser.next()?.ok()?;
        let pos = (span.start.line(), span.start.col() + 1);
        let node = match &event {
            // A scalar in key position of a mapping names the next value.
            Event::Scalar(s, ..) if matches!(stack.last(), Some(Frame::Map { key: None })) => {
                if let Some(Frame::Map { key }) = stack.last_mut() {
                    *key = Some(s.to_string());
                }
                return Some(Node {
                    path: current_path(&stack),
                    key: true,
                    pos,
                });
            }
            Event::Scalar(..)
            | Event::SequenceStart(..)
            | Event::MappingStart(..)
            | Event::Alias(..) => Some(Node {
                path: current_path(&stack),
                key: false,
                pos,
            }),
            _ => None,
        };
        match event {
            Event::MappingStart(..) => stack.push(Frame::Map { key: None }),
            Event::SequenceStart(..) => stack.push(Frame::Seq { index: 0 }),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                advance(&mut stack);
            }
            Event::Scalar(..) | Event::Alias(..) => advance(&mut stack),
            _ => {}
        }
        if node.is_some() {
            return node;
        }
    })
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key }) => *key = None,
        Some(Frame::Seq { index }) => *index += 1,
        None => {}
    }
}

fn current_path(stack: &[Frame]) -> Vec<String> {
    let mut out = Vec::with_capacity(stack.len());
    for f in stack {
        match f {
            Frame::Map { key: Some(k) } => out.push(k.clone()),
            Frame::Map { key: None } => break,
            Frame::Seq { index } => out.push(index.to_string()),
        }
    }
    out
}

fn prefix_len(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "kind: deploy\nparams:\n  service: web\n  hosts:\n    - a\n    - b\n";

    #[test]
    fn locates_values_and_keys() {
        let p = |s: &str| pointer_steps(s);
        assert_eq!(locate(DOC, &p("/kind"), false), Some((1, 7)));
        assert_eq!(locate(DOC, &p("/kind"), true), Some((1, 1)));
        assert_eq!(locate(DOC, &p("/params/service"), false), Some((3, 12)));
        assert_eq!(locate(DOC, &p("/params/hosts/1"), false), Some((6, 7)));
        assert_eq!(locate(DOC, &p("/params/service"), true), Some((3, 3)));
    }

    #[test]
    fn rejects_bom_non_utf8_and_size() {
        assert_eq!(text("f", b"\xEF\xBB\xBFkind: x").unwrap_err().rule, "bom");
        let v = text("f", b"kind: x\nparams: \xff\n").unwrap_err();
        assert_eq!((&*v.rule, v.line, v.column), ("not-utf8", Some(2), Some(9)));
        let big = vec![b'a'; MAX_FILE_BYTES + 1];
        assert_eq!(text("f", &big).unwrap_err().rule, "file-too-large");
    }

    #[test]
    fn rejects_duplicates_aliases_and_depth() {
        let dup = parse::<serde_json::Value>("f", "kind: a\nkind: b\n").unwrap_err();
        assert_eq!(dup.rule, "duplicate-key", "{dup}");
        assert_eq!(dup.line, Some(2));

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + (i - 1) as u8) as char;
            let cur = (b'a' + i as u8) as char;
            bomb.push_str(&format!(
                "{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = parse::<serde_json::Value>("f", &bomb).unwrap_err();
        assert_eq!(err.rule, "alias-limit", "{err}");

        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let err = parse::<serde_json::Value>("f", &deep).unwrap_err();
        assert_eq!(err.rule, "too-complex", "{err}");
        let deeper = format!("a: {}{}", "[".repeat(5000), "]".repeat(5000));
        let err = parse::<serde_json::Value>("f", &deeper).unwrap_err();
        assert_eq!(err.rule, "too-complex", "{err}");
        let two = parse::<serde_json::Value>("f", "a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(two.rule, "multiple-documents", "{two}");
    }

    #[test]
    fn only_true_and_false_are_booleans_and_merge_keys_are_refused() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct B {
            b: bool,
        }
        for doc in ["b: yes\n", "b: \"yes\"\n", "b: on\n", "b: 1\n"] {
            assert!(parse::<B>("f", doc).is_err(), "{doc}");
        }
        assert!(parse::<B>("f", "b: true\n").unwrap().b);
        let v = parse::<serde_json::Value>("f", "b: yes\n").unwrap();
        assert_eq!(v["b"], "yes");
        let err = parse::<serde_json::Value>("f", "x: &x {a: 1}\ny:\n  <<: *x\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
    }

    #[test]
    fn rejects_explicit_tags() {
        for (doc, tag, line) in [
            ("kind: !!binary ZWNobw==\n", "!!binary", 1),
            (
                "a: 1\nb: !!python/object:os.system {x: 1}\n",
                "!!python/object:os.system",
                2,
            ),
            ("a: !custom [1]\n", "!custom", 1),
        ] {
            let err = parse::<serde_json::Value>("f", doc).unwrap_err();
            assert_eq!((&*err.rule, err.line), ("yaml-tag", Some(line)), "{err}");
            assert!(err.message.contains(tag), "{err}");
        }
        assert!(parse::<serde_json::Value>("f", "a: '!!binary'\n").is_ok());
    }
}
