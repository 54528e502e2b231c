//! Requests: the YAML files agents and people add under the inbox.
//!
//! Parsing goes bytes → checked text → YAML value → JSON Schema → typed [`Request`]; every
//! failure becomes a [`Violation`] with the file, the position and a hint.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};

use super::units::parse_duration;
use super::words::{self, Origin};
use super::yaml::{self, locate, pointer_steps};
use super::{Violation, Violations};

/// The request JSON Schema (draft 2020-12), embedded in the binary.
pub const SCHEMA: &str = include_str!("request.schema.json");

/// A validated request id: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Check `s` against the id rule.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && s.len() <= 128 {
            Ok(RequestId(s.to_string()))
        } else {
            Err(format!(
                "`{}` is not a valid id: use 1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit",
                s.escape_debug()
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request that passed the schema; handler-specific checks come later in `plan`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Path of the file in the repository.
    pub file: String,
    /// The id (explicit, or the file stem).
    pub id: RequestId,
    /// The handler kind.
    pub kind: String,
    /// Explicit lock key, if any.
    pub resource: Option<String>,
    /// Handler parameters.
    pub params: Map<String, Value>,
    /// Requested timeout (may only shorten the handler's).
    pub timeout: Option<Duration>,
    /// Labels a runner must carry to take it.
    pub runs_on: Vec<String>,
    /// The whole request as JSON, as the handler sees it in `/codex/request.json`.
    pub document: Value,
    /// The YAML text, kept to locate later errors.
    pub source: String,
}

/// The file stem of a request file if it has a request extension.
pub fn request_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .filter(|s| !s.is_empty())
}

/// A compiled JSON Schema together with its source, for validation and hints.
pub struct Schema {
    /// The schema document.
    pub document: Value,
    /// The compiled validator.
    pub validator: jsonschema::Validator,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.document)
    }
}

impl Schema {
    /// Compile a draft 2020-12 schema; remote `$ref`s are never fetched.
    pub fn compile(document: Value) -> Result<Self, String> {
        let validator = jsonschema::draft202012::new(&document).map_err(|e| e.to_string())?;
        Ok(Schema {
            document,
            validator,
        })
    }
}

fn request_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let doc: Value = serde_json::from_str(SCHEMA).expect("embedded request schema is JSON");
        Schema::compile(doc).expect("embedded request schema compiles")
    })
}

/// Parse and schema-check the request file `file` (its repository path) from `bytes`.
pub fn parse_request(file: &str, bytes: &[u8]) -> Result<Request, Violations> {
    let text = yaml::text(file, bytes)?;
    let document: Value = yaml::parse(file, text)?;
    if document.is_null() {
        return Err(Violations(vec![Violation::new(
            file,
            "empty-request",
            "the file holds no request (it is empty, only comments, or `null`)",
        )
        .saw(
            "a request: `kind:` and, as the handler needs, `params:`",
            "no request",
        )
        .hint(
            "a request needs at least `kind:` naming a handler, such as `kind: echo`",
        )]));
    }
    let violations = schema_violations(
        request_schema(),
        &document,
        text,
        file,
        "",
        Origin::Request,
        "see the request's fields: codex-runner schema request",
    );
    if !violations.is_empty() {
        return Err(Violations(violations));
    }
    let obj = document.as_object().cloned().unwrap_or_default();
    let name = file.rsplit('/').next().unwrap_or(file);
    let stem = request_stem(name).unwrap_or(name);
    let id_text = obj.get("id").and_then(Value::as_str).unwrap_or(stem);
    let id = RequestId::parse(id_text).map_err(|_| {
        let explained = words::id_value(id_text);
        if obj.contains_key("id") {
            Violation::explained(file, explained).at(locate(text, &["id".to_string()], false))
        } else {
            let v = Violation::explained(file, explained);
            let hint = format!(
                "the id is the file name without .yaml: rename the file, or set `id:`{}",
                v.suggestion
                    .as_deref()
                    .map(|s| format!(" (such as `id: {s}`)"))
                    .unwrap_or_default()
            );
            Violation {
                message: format!("the file name gives no valid id: {}", v.message),
                hint: Some(hint),
                ..v
            }
        }
    })?;
    let timeout = match obj.get("timeout") {
        None => None,
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        Some(Value::String(s)) => Some(parse_duration(s).map_err(|_| {
            Violation::explained(file, words::timeout(&Value::String(s.clone()))).at(locate(
                text,
                &["timeout".to_string()],
                false,
            ))
        })?),
        Some(_) => None,
    };
    Ok(Request {
        file: file.to_string(),
        id,
        kind: obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        resource: obj
            .get("resource")
            .and_then(Value::as_str)
            .map(str::to_string),
        params: obj
            .get("params")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        timeout,
        runs_on: obj
            .get("runs-on")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        document,
        source: text.to_string(),
    })
}

/// Validate `instance` and turn each schema error into a located violation in the writer's
/// terms ([`words::explain`]).
///
/// `prefix` is the JSON pointer of `instance` inside the file (e.g. `/params`); `origin` says
/// whose schema it is; `where_to_look` is the hint for errors that have no more specific one.
pub fn schema_violations(
    schema: &Schema,
    instance: &Value,
    text: &str,
    file: &str,
    prefix: &str,
    origin: Origin,
    where_to_look: &str,
) -> Vec<Violation> {
    use jsonschema::error::ValidationErrorKind as K;
    let mut out = Vec::new();
    let mut errors = schema.validator.iter_errors(instance);
    // Each violation is located by a walk over the text: a bounded number of them keeps a
    // hostile file (50,000 wrong items) from costing 50,000 walks.
    for err in errors.by_ref().take(MAX_SCHEMA_VIOLATIONS) {
        let pointer = format!("{prefix}{}", err.instance_path().as_str());
        let mut steps = pointer_steps(&pointer);
        // The schema node that holds the failing keyword: its types, description, fields.
        let schema_path = err.schema_path().as_str();
        let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
        let at = words::At {
            steps: &steps,
            node: schema.document.pointer(parent),
        };
        let explained = words::explain(origin, err.kind(), err.instance(), &at);
        // An unknown field is shown where its key is.
        let key = match err.kind() {
            K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
                steps.push(unexpected.first().cloned().unwrap_or_default());
                true
            }
            _ => false,
        };
        let mut v = Violation::explained(file, explained).at(locate(text, &steps, key));
        if v.hint.is_none() {
            v.hint = Some(where_to_look.to_string());
        }
        out.push(v);
    }
    let more = errors.count();
    if more > 0 {
        out.push(
            Violation::new(
                file,
                "more-problems",
                format!("… and {more} more problems, not listed"),
            )
            .hint("fix the ones listed, then validate again: `codex-runner validate`"),
        );
    }
    out
}

/// Schema violations listed per file; the rest are counted.
pub const MAX_SCHEMA_VIOLATIONS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, Violations> {
        parse_request("requests/r1.yaml", text.as_bytes())
    }

    #[test]
    fn minimal_request_takes_id_from_file_stem() {
        let r = parse("kind: echo\nparams:\n  message: hi\n").unwrap();
        assert_eq!(r.id.as_str(), "r1");
        assert_eq!(r.kind, "echo");
        assert_eq!(r.params["message"], "hi");
        assert_eq!(r.timeout, None);
    }

    #[test]
    fn explicit_fields() {
        let r = parse("kind: deploy\nid: d-7\nresource: web\ntimeout: 5m\nruns-on: [gpu, eu]\n")
            .unwrap();
        assert_eq!(r.runs_on, ["gpu", "eu"]);
        assert_eq!(
            parse("kind: x\nruns-on: gpu\n").unwrap_err().0[0].rule,
            "wrong-type"
        );
        assert_eq!(r.id.as_str(), "d-7");
        assert_eq!(r.resource.as_deref(), Some("web"));
        assert_eq!(r.timeout, Some(Duration::from_secs(300)));
        let r = parse("kind: deploy\ntimeout: 45\n").unwrap();
        assert_eq!(r.timeout, Some(Duration::from_secs(45)));
    }

    #[test]
    fn unknown_field_is_located_with_hint() {
        let err = parse("kind: echo\nparms:\n  a: 1\n").unwrap_err();
        let v = &err.0[0];
        assert_eq!(v.rule, "unknown-field");
        assert_eq!((v.line, v.column), (Some(2), Some(1)));
        assert_eq!(v.hint.as_deref(), Some("did you mean `params`?"));
    }

    #[test]
    fn wrong_types_and_missing_kind() {
        let err = parse("kind: echo\nparams: [1, 2]\n").unwrap_err();
        assert_eq!(err.0[0].rule, "wrong-type");
        assert_eq!(err.0[0].line, Some(2));
        let err = parse("params: {}\n").unwrap_err();
        assert_eq!(err.0[0].rule, "missing-field");
        for empty in ["", "# only a comment\n", "null\n", "~\n"] {
            let err = parse(empty).unwrap_err();
            assert_eq!(err.0[0].rule, "empty-request", "{err}");
        }
    }

    #[test]
    fn path_traversal_ids_are_rejected() {
        let err = parse("kind: echo\nid: ../../etc/passwd\n").unwrap_err();
        assert_eq!(err.0[0].rule, "invalid-id", "{err}");
        assert_eq!(err.0[0].suggestion.as_deref(), Some("etc-passwd"), "{err}");
        assert_eq!(err.0[0].line, Some(2));
        let err = parse_request("requests/..yaml", b"kind: echo\n").unwrap_err();
        assert_eq!(err.0[0].rule, "invalid-id", "{err}");
        assert!(RequestId::parse("a/b").is_err());
        assert!(RequestId::parse(&"a".repeat(129)).is_err());
        assert!(RequestId::parse("ok.id_1-2").is_ok());
    }

    #[test]
    fn bad_timeout() {
        let err = parse("kind: echo\ntimeout: soon\n").unwrap_err();
        assert_eq!(err.0[0].line, Some(2), "{err}");
    }

    #[test]
    fn stems() {
        assert_eq!(request_stem("a.yaml"), Some("a"));
        assert_eq!(request_stem("a.yml"), Some("a"));
        assert_eq!(request_stem(".gitkeep"), None);
        assert_eq!(request_stem(".yaml"), None);
    }
}
