//! Schema errors in the writer's terms.
//!
//! The JSON Schema library reports keywords (`oneOf`, `pattern`, `type`) and its own English.
//! A person or an agent who wrote a request needs what was expected, what was found, and how
//! to fix it. [`explain`] maps each keyword, and for the request's own fields each field,
//! to our words; nothing of the library's text reaches a message.
//!
//! PURE: values in, words out.

use jsonschema::error::ValidationErrorKind as K;
use serde_json::Value;

use super::closest;

/// Longest quoted value in a message, in characters.
const MAX_QUOTE: usize = 60;

/// One schema error, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// The stable rule name.
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// What the rule accepts.
    pub expected: Option<String>,
    /// What the file holds there.
    pub found: Option<String>,
    /// How to fix it.
    pub hint: Option<String>,
    /// The replacement text for the value, where one is known.
    pub suggestion: Option<String>,
}

impl Explained {
    fn new(rule: &'static str, message: String) -> Self {
        Explained {
            rule,
            message,
            expected: None,
            found: None,
            hint: None,
            suggestion: None,
        }
    }
    fn expected(mut self, s: impl Into<String>) -> Self {
        self.expected = Some(s.into());
        self
    }
    fn found(mut self, s: impl Into<String>) -> Self {
        self.found = Some(s.into());
        self
    }
    fn hint(mut self, s: impl Into<String>) -> Self {
        self.hint = Some(s.into());
        self
    }
    fn hint_or(mut self, s: Option<String>) -> Self {
        if self.hint.is_none() {
            self.hint = s;
        }
        self
    }
    fn suggest(mut self, s: impl Into<String>) -> Self {
        self.suggestion = Some(s.into());
        self
    }
}

/// Which schema an error comes from: the request's own (whose fields we know) or a handler's
/// `params` schema (which we only know by its keywords).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request schema (`codex-runner schema request`).
    Request,
    /// A handler's params schema in `handlers/index.yml`.
    Params,
}

/// Where the error is: the steps from the document root (`["params", "sleep"]`).
pub struct At<'a> {
    /// Steps from the root of the file.
    pub steps: &'a [String],
    /// The schema node holding the keyword that failed, when it can be found.
    pub node: Option<&'a Value>,
}

impl At<'_> {
    /// The field as a writer names it: `params.hosts[2]`, or "the request".
    pub fn name(&self) -> String {
        field_name(self.steps)
    }
    fn last(&self) -> &str {
        self.steps.last().map_or("", String::as_str)
    }
    fn description(&self) -> Option<String> {
        self.node
            .and_then(|n| n.get("description"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// A field path as a writer names it: keys joined with `.`, list positions as `[i]`.
pub fn field_name(steps: &[String]) -> String {
    if steps.is_empty() {
        return "the request".into();
    }
    let mut out = String::new();
    for s in steps {
        if s.parse::<usize>().is_ok() && !out.is_empty() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    format!("`{out}`")
}

/// A value for a message: plain text when it reads plainly, else quoted; cut when long.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => show_str(s),
        Value::Array(_) | Value::Object(_) => {
            let s = serde_json::to_string(v).unwrap_or_default();
            format!("`{}`", cut(&s))
        }
        other => format!("`{other}`"),
    }
}

fn show_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.trim() == s
        && s.chars().all(|c| !c.is_control() && c != '`' && c != '"');
    if plain {
        format!("`{}`", cut(s))
    } else {
        format!("`{}`", cut(&serde_json::to_string(s).unwrap_or_default()))
    }
}

fn cut(s: &str) -> String {
    let n = s.chars().count();
    if n <= MAX_QUOTE {
        return s.to_string();
    }
    let head: String = s.chars().take(MAX_QUOTE).collect();
    format!("{head}… ({n} characters)")
}

/// What a value is, as a writer says it: "the number -5", "the text `5 minutes`", "a list of
/// 2 items", "nothing (null)".
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (an empty value)".into(),
        Value::Bool(b) => format!("`{b}` (true or false)"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.is_empty() => "empty text".into(),
        Value::String(s) => format!("the text {}", show_str(s)),
        Value::Array(a) => match a.len() {
            0 => "an empty list".into(),
            1 => "a list of one item".into(),
            n => format!("a list of {n} items"),
        },
        Value::Object(m) => match m.len() {
            0 => "an empty mapping".into(),
            1 => "a mapping with one field".into(),
            n => format!("a mapping with {n} fields"),
        },
    }
}

/// A JSON Schema type in the writer's words.
fn type_words(t: &str) -> &'static str {
    match t {
        "string" => "text",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "object" => "a mapping of names to values",
        "array" => "a list",
        "null" => "nothing (null)",
        _ => "another kind of value",
    }
}

/// The types a schema node asks for, in words ("text or a whole number").
fn expected_types(node: Option<&Value>) -> Option<String> {
    let t = node?.get("type")?;
    let names: Vec<&str> = match t {
        Value::String(s) => vec![type_words(s)],
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(type_words).collect(),
        _ => return None,
    };
    (!names.is_empty()).then(|| names.join(" or "))
}

/// The value as YAML would write it inline, for suggestions.
fn inline(v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty()
                && s.trim() == s
                && !s.contains([':', '#', ',', '[', ']', '{', '}', '"', '\'']) =>
        {
            s.clone()
        }
        Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Explain one schema error at `at` whose failing value is `found`.
pub fn explain(origin: Origin, kind: &K, found: &Value, at: &At<'_>) -> Explained {
    if origin == Origin::Request {
        if let Some(e) = request_field(kind, found, at) {
            return e;
        }
    }
    let e = by_keyword(kind, found, at);
    let description = at.description();
    e.hint_or(description)
}

/// The request's own fields, which have rules of their own.
fn request_field(kind: &K, found: &Value, at: &At<'_>) -> Option<Explained> {
    let top = at.steps.first().map(String::as_str);
    let depth = at.steps.len();
    Some(match (top, depth) {
        (None, _) => document(kind, found)?,
        (Some("timeout"), 1) => timeout(found),
        (Some("kind"), 1) => kind_value(found),
        (Some("id"), 1) => match found.as_str() {
            Some(s) => id_value(s),
            None => return None,
        },
        (Some("runs-on"), 1) if matches!(kind, K::Type { .. }) => {
            let fixed = match found {
                Value::String(s) => format!("[{}]", inline(&Value::String(s.clone()))),
                other => format!("[{}]", inline(other)),
            };
            Explained::new(
                "wrong-type",
                format!(
                    "`runs-on` is a list of labels; found {}",
                    match found {
                        Value::String(s) => format!("a single label {}", show_str(s)),
                        other => describe(other),
                    }
                ),
            )
            .expected("a list of runner labels, such as [linux] or [linux, gpu]")
            .found(describe(found))
            .hint(format!("write it as a list: `runs-on: {fixed}`"))
            .suggest(fixed)
        }
        (Some("runs-on"), 2) if matches!(kind, K::Pattern { .. } | K::Type { .. }) => {
            Explained::new(
                "invalid-label",
                format!(
                    "{} is not a runner label: found {}",
                    at.name(),
                    describe(found)
                ),
            )
            .expected("letters, digits, `.`, `_` or `-`, starting with a letter or digit, at most 64 characters")
            .found(describe(found))
            .hint("labels are the names runners register with `codex-runner register --label`")
        }
        (Some("resource"), 1) if matches!(kind, K::MinLength { .. }) => Explained::new(
            "invalid-value",
            "`resource` is empty".into(),
        )
        .expected("1 to 200 characters naming what the request changes")
        .found("empty text")
        .hint("name what the request changes (requests with the same resource run one at a time), or remove `resource:` to use the handler's default"),
        (Some("params"), 1) if matches!(kind, K::Type { .. }) => params_type(found),
        _ => return None,
    })
}

fn document(kind: &K, found: &Value) -> Option<Explained> {
    if !matches!(kind, K::Type { .. }) {
        return None;
    }
    let e = Explained::new(
        "wrong-type",
        format!(
            "the file holds {}, not a request: a request is a mapping of fields such as `kind: echo`",
            describe(found)
        ),
    )
    .expected("a mapping with `kind:` and, as the handler needs, `params:`")
    .found(describe(found));
    Some(match found {
        Value::String(s) => {
            // `kind echo`: a key without its colon.
            let mut words = s.splitn(2, char::is_whitespace);
            match (words.next(), words.next()) {
                (Some(key), Some(value)) if !key.ends_with(':') => e
                    .hint(format!(
                        "separate each field from its value with a colon and a space: `{key}: {}`",
                        value.trim()
                    ))
                    .suggest(format!("{key}: {}", value.trim())),
                _ => e.hint("write the request as `field: value` lines, starting with `kind:`"),
            }
        }
        Value::Array(_) => {
            e.hint("remove the leading `- `: a request file holds one request, not a list")
        }
        _ => e.hint("write the request as `field: value` lines, starting with `kind:`"),
    })
}

/// The forms a timeout takes, as every timeout message says them.
pub const TIMEOUT_FORMS: &str =
    "a positive whole number of seconds, or a duration such as 30s, 5m, 1h";

/// A `timeout` the schema refused, or the duration parser did.
pub fn timeout(found: &Value) -> Explained {
    let e = Explained::new(
        "invalid-timeout",
        format!(
            "`timeout` must be {TIMEOUT_FORMS}; found {}",
            describe(found)
        ),
    )
    .expected(TIMEOUT_FORMS)
    .found(describe(found));
    match found {
        Value::Number(n) if n.as_f64().is_some_and(|f| f <= 0.0) => {
            e.hint("a timeout is a positive number of seconds or a duration such as 30s, 5m, 1h; leave it out to use the handler's own")
        }
        Value::Number(n) => {
            // 1.5 → 90s
            let secs = n.as_f64().unwrap_or_default();
            let whole = (secs * 1000.0).round() as u64;
            let fix = if whole.is_multiple_of(1000) {
                format!("{}s", whole / 1000)
            } else {
                format!("{whole}ms")
            };
            e.hint(format!("write whole seconds or a unit: `timeout: {fix}`"))
                .suggest(fix)
        }
        Value::String(s) => match duration_fix(s) {
            Some(fix) => e
                .hint(format!("write it as `timeout: {fix}`"))
                .suggest(fix),
            None if s.trim_start().starts_with(|c: char| c.is_ascii_digit()) => {
                e.hint("units are ms, s, m and h, written right after the number: 30s, 5m, 1h")
            }
            None => e.hint("write a number of seconds, or a duration such as 30s, 5m, 1h"),
        },
        _ => e.hint("write a number of seconds or a duration such as 5m"),
    }
}

/// `5 minutes` → `5m`, `2 hours` → `2h`, `1d` → `24h`, `90 sec` → `90s`, `0s` → none.
fn duration_fix(s: &str) -> Option<String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok().filter(|n| *n > 0)?;
    let unit = unit.trim().to_ascii_lowercase();
    let (n, unit) = match unit.as_str() {
        "ms" | "msec" | "millisecond" | "milliseconds" => (n, "ms"),
        "s" | "sec" | "secs" | "second" | "seconds" => (n, "s"),
        "m" | "min" | "mins" | "minute" | "minutes" => (n, "m"),
        "h" | "hr" | "hrs" | "hour" | "hours" => (n, "h"),
        "d" | "day" | "days" => (n.checked_mul(24)?, "h"),
        _ => return None,
    };
    let fix = format!("{n}{unit}");
    (fix != t).then_some(fix)
}

/// A `kind` the schema refused: the fix where it is plain (case, spaces).
fn kind_value(found: &Value) -> Explained {
    let expected = "a handler name: lowercase letters, digits, `-` and `_`, at most 64 characters, as in handlers/index.yml";
    let Some(s) = found.as_str() else {
        return Explained::new(
            "invalid-kind",
            format!("`kind` must name a handler; found {}", describe(found)),
        )
        .expected(expected)
        .found(describe(found))
        .hint("write the handler's name, such as `kind: echo`");
    };
    let trimmed = s.trim();
    let lower = trimmed.to_ascii_lowercase();
    let (what, fix) = if s.trim().is_empty() {
        ("`kind` is empty".to_string(), String::new())
    } else if trimmed != s {
        let side = match (
            s.starts_with(char::is_whitespace),
            s.ends_with(char::is_whitespace),
        ) {
            (true, true) => "leading and trailing spaces",
            (true, false) => "a leading space",
            _ => "a trailing space",
        };
        (format!("`kind` has {side}: {}", show_str(s)), lower)
    } else if lower != s {
        (
            format!("`kind` is written in lowercase; found {}", show_str(s)),
            lower,
        )
    } else {
        let cleaned: String = lower
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        (
            format!("`kind` {} is not a handler name", show_str(s)),
            cleaned,
        )
    };
    let e = Explained::new("invalid-kind", what)
        .expected(expected)
        .found(describe(found));
    if fix.is_empty() || fix == s {
        e.hint("write the handler's name, such as `kind: echo`")
    } else {
        e.hint(format!("write `kind: {fix}`")).suggest(fix)
    }
}

/// An `id` the schema (or the file name) refused: its length, or its first bad character.
pub fn id_value(s: &str) -> Explained {
    let rule = "1 to 128 letters, digits, `.`, `_` or `-`, starting with a letter or digit";
    let len = s.chars().count();
    let fixed: String = {
        let mut f: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        f = f.trim_start_matches(['.', '_', '-']).to_string();
        f.chars().take(128).collect()
    };
    let message = if len > 128 {
        format!("`id` is {len} characters long; at most 128 are allowed")
    } else if len == 0 {
        "`id` is empty".to_string()
    } else if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let shown = if bad.is_whitespace() {
            "a space".to_string()
        } else {
            format!("`{}`", bad.escape_debug())
        };
        format!("`id` {} contains {shown}, which an id may not", show_str(s))
    } else {
        format!("`id` {} must start with a letter or digit", show_str(s))
    };
    let e = Explained::new("invalid-id", message)
        .expected(rule)
        .found(if len > 128 {
            format!("{len} characters")
        } else {
            describe(&Value::String(s.to_string()))
        });
    if fixed.is_empty() {
        e.hint(format!("an id is {rule}"))
    } else if len > 128 {
        e.hint("shorten it to 128 characters").suggest(fixed)
    } else {
        e.hint(format!("an id is {rule}, such as `{fixed}`"))
            .suggest(fixed)
    }
}

fn params_type(found: &Value) -> Explained {
    let e = Explained::new(
        "wrong-type",
        format!(
            "`params` must be a mapping of parameter names to values; found {}",
            describe(found)
        ),
    )
    .expected("a mapping of parameter names to values")
    .found(describe(found));
    match found {
        Value::Null => e
            .hint("list the handler's parameters under `params:`, indented (such as `  message: hi`), or write `params: {}` when it takes none")
            .suggest("{}"),
        Value::Array(_) => e.hint(
            "write `name: value` lines under `params:`, not `- item` entries; `codex-runner handlers list` shows each handler's parameters",
        ),
        _ => e.hint("write `name: value` lines under `params:`, indented"),
    }
}

fn by_keyword(kind: &K, found: &Value, at: &At<'_>) -> Explained {
    let field = at.name();
    let key = at.last().to_string();
    let f = describe(found);
    match kind {
        K::Type { .. } => {
            let expected =
                expected_types(at.node).unwrap_or_else(|| "another kind of value".into());
            let e = Explained::new(
                "wrong-type",
                format!("{field} must be {expected}; found {f}"),
            )
            .expected(expected.clone())
            .found(f);
            type_fix(e, &expected, found, &key)
        }
        K::Pattern { pattern } => pattern_value(&field, pattern, found, f),
        K::Enum { options } => enum_value(&field, options, found, f),
        K::Constant { expected_value } => Explained::new(
            "not-allowed-value",
            format!("{field} must be {}; found {f}", show(expected_value)),
        )
        .expected(show(expected_value))
        .found(f)
        .suggest(inline(expected_value)),
        K::Minimum { limit } => bound(&field, "at least", limit, f, "too-small", at.node),
        K::ExclusiveMinimum { limit } => bound(&field, "more than", limit, f, "too-small", at.node),
        K::Maximum { limit } => bound(&field, "at most", limit, f, "too-large", at.node),
        K::ExclusiveMaximum { limit } => bound(&field, "less than", limit, f, "too-large", at.node),
        K::MultipleOf { .. } => {
            let m = at
                .node
                .and_then(|n| n.get("multipleOf"))
                .map(|m| m.to_string())
                .unwrap_or_default();
            Explained::new(
                "invalid-value",
                format!("{field} must be a multiple of {m}; found {f}"),
            )
            .expected(format!("a multiple of {m}"))
            .found(f)
        }
        K::MinLength { limit } => {
            let n = found.as_str().map_or(0, |s| s.chars().count());
            let msg = if n == 0 {
                format!(
                    "{field} is empty; it needs at least {limit} character{}",
                    plural(*limit)
                )
            } else {
                format!(
                    "{field} is {n} character{} long; it needs at least {limit}",
                    plural(n as u64)
                )
            };
            Explained::new("too-short", msg)
                .expected(format!("at least {limit} character{}", plural(*limit)))
                .found(format!("{n} character{}", plural(n as u64)))
        }
        K::MaxLength { limit } => {
            let n = found.as_str().map_or(0, |s| s.chars().count());
            Explained::new(
                "too-long",
                format!("{field} is {n} characters long; at most {limit} are allowed"),
            )
            .expected(format!("at most {limit} characters"))
            .found(format!("{n} characters"))
            .hint(format!("shorten it to at most {limit} characters"))
        }
        K::MinItems { limit } => count(&field, "at least", *limit, found, "item", "too-short"),
        K::MaxItems { limit } => count(&field, "at most", *limit, found, "item", "too-long"),
        K::MinProperties { limit } => {
            count(&field, "at least", *limit, found, "field", "too-short")
        }
        K::MaxProperties { limit } => count(&field, "at most", *limit, found, "field", "too-long"),
        K::UniqueItems => unique_items(&field, &key, found),
        K::Required { property } => required(at, &field, property),
        K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
            unknown_field(at, &field, unexpected)
        }
        K::FalseSchema => Explained::new("unknown-field", format!("{field} is not allowed here"))
            .found(f)
            .hint("remove it"),
        K::OneOfNotValid { .. } | K::AnyOf { .. } => {
            let forms = forms(at.node);
            Explained::new(
                "invalid-value",
                format!("{field} has none of the forms the handler accepts; found {f}"),
            )
            .expected(
                forms
                    .clone()
                    .unwrap_or_else(|| "one of the forms in the handler's schema".into()),
            )
            .found(f)
            .hint(match forms {
                Some(fs) => format!("write {fs}"),
                None => "see the handler's params schema: `codex-runner handlers list`".into(),
            })
        }
        K::OneOfMultipleValid { .. } => Explained::new(
            "invalid-value",
            format!("{field} fits more than one of the forms the handler tells apart; found {f}"),
        )
        .found(f)
        .hint("see the handler's params schema: `codex-runner handlers list`"),
        K::Format { format } => Explained::new(
            "invalid-value",
            format!("{field} {} is not a valid {format}", show(found)),
        )
        .expected(format!("a {format}"))
        .found(f),
        K::Not { .. } => Explained::new(
            "not-allowed-value",
            format!("{field} has a value the handler forbids: {}", show(found)),
        )
        .found(f),
        K::Contains => Explained::new(
            "invalid-value",
            format!("{field} has no item of the kind the handler requires"),
        )
        .found(f),
        K::PropertyNames { .. } => Explained::new(
            "invalid-value",
            format!("{field} has a field name the handler does not accept"),
        )
        .found(f),
        // Rules a handler's schema can state that need no words of their own.
        _ => Explained::new(
            "invalid-value",
            format!("{field} does not satisfy the handler's params schema; found {f}"),
        )
        .found(f),
    }
}

/// Text that does not match the handler's pattern; a stray space is named as such.
fn pattern_value(field: &str, pattern: &str, found: &Value, f: String) -> Explained {
    let e = Explained::new(
        "invalid-value",
        format!(
            "{field} {} does not have the form the handler expects",
            show(found)
        ),
    )
    .expected(format!("text matching the pattern `{}`", cut(pattern)))
    .found(f);
    match found.as_str() {
        Some(s) if s.trim() != s => {
            let side = if s.ends_with(char::is_whitespace) {
                "a trailing"
            } else {
                "a leading"
            };
            Explained {
                message: format!("{field} has {side} space: {}", show(found)),
                ..e
            }
            .hint("remove the space")
            .suggest(s.trim())
        }
        _ => e,
    }
}

/// A value the handler's list does not hold; the name probably meant.
fn enum_value(field: &str, options: &Value, found: &Value, f: String) -> Explained {
    let list: Vec<String> = options
        .as_array()
        .map(|a| a.iter().map(show).collect())
        .unwrap_or_default();
    let e = Explained::new(
        "not-allowed-value",
        format!("{field} must be one of {}; found {f}", list.join(", ")),
    )
    .expected(format!("one of {}", list.join(", ")))
    .found(f);
    let names: Vec<String> = options
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    match found.as_str().and_then(|s| nearest(s, &names)) {
        Some(n) => e.hint(format!("did you mean `{n}`?")).suggest(n),
        None => e,
    }
}

/// A list naming an item twice; the list with each once.
fn unique_items(field: &str, key: &str, found: &Value) -> Explained {
    let items = found.as_array().cloned().unwrap_or_default();
    let mut seen = Vec::new();
    let mut dup = None;
    let mut unique = Vec::new();
    for it in items {
        if seen.contains(&it) {
            dup.get_or_insert(it);
        } else {
            seen.push(it.clone());
            unique.push(it);
        }
    }
    let dup = dup.map(|d| show(&d)).unwrap_or_default();
    let fixed = inline(&Value::Array(unique));
    Explained::new(
        "duplicate-item",
        format!("{field} lists {dup} more than once"),
    )
    .expected("each item once")
    .found(format!("{dup} more than once"))
    .hint(format!("write `{key}: {fixed}`"))
    .suggest(fixed)
}

/// A field the schema requires and the file lacks; what it is for, where the schema says.
fn required(at: &At<'_>, field: &str, property: &Value) -> Explained {
    let p = property.as_str().unwrap_or("?");
    let what = if at.steps.is_empty() {
        "the request".to_string()
    } else {
        field.to_string()
    };
    let prop_desc = at
        .node
        .and_then(|n| n.get("properties"))
        .and_then(|p2| p2.get(p))
        .and_then(|p2| p2.get("description"))
        .and_then(Value::as_str);
    let e = Explained::new(
        "missing-field",
        format!("{what} has no `{p}`, which is required"),
    )
    .expected(format!("a `{p}:` field"))
    .found(format!("no `{p}`"));
    match prop_desc {
        _ if at.steps.is_empty() && p == "kind" => e.hint(
            "add `kind:` naming the handler that runs the request, such as `kind: echo`; `codex-runner handlers list` shows them",
        ),
        Some(d) => e.hint(format!("add `{p}:` ({})", d.trim_end_matches('.'))),
        None => e.hint(format!("add `{p}:`")),
    }
}

/// A field the schema does not name; the one probably meant, or those there are.
fn unknown_field(at: &At<'_>, field: &str, unexpected: &[String]) -> Explained {
    let bad = unexpected.first().cloned().unwrap_or_default();
    let known: Vec<String> = at
        .node
        .and_then(|n| n.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let place = if at.steps.is_empty() {
        "a request".to_string()
    } else {
        field.to_string()
    };
    let e = Explained::new("unknown-field", format!("{place} has no field `{bad}`"))
        .expected(if known.is_empty() {
            "no further fields".to_string()
        } else {
            format!("one of {}", known.join(", "))
        })
        .found(format!("`{bad}`"));
    match nearest(&bad, &known) {
        Some(k) => e.hint(format!("did you mean `{k}`?")).suggest(k),
        None if known.is_empty() => e.hint("remove it"),
        None => e.hint(format!("allowed fields: {}", known.join(", "))),
    }
}

fn type_fix(e: Explained, expected: &str, found: &Value, key: &str) -> Explained {
    let wants = |t: &str| expected.split(" or ").any(|w| w == type_words(t));
    match found {
        Value::String(s) => {
            let as_int = s.trim().parse::<i64>().is_ok();
            let as_num = s.trim().parse::<f64>().is_ok_and(f64::is_finite);
            if (wants("integer") && as_int) || (wants("number") && as_num) {
                return e
                    .hint(format!(
                        "write the number without quotes: `{key}: {}`",
                        s.trim()
                    ))
                    .suggest(s.trim());
            }
            if wants("boolean") && matches!(s.as_str(), "true" | "false") {
                return e
                    .hint(format!("write it without quotes: `{key}: {s}`"))
                    .suggest(s.clone());
            }
            if wants("boolean")
                && matches!(
                    s.to_ascii_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n"
                )
            {
                let b = matches!(s.to_ascii_lowercase().as_str(), "yes" | "on" | "y");
                return e
                    .hint(format!(
                        "only `true` and `false` are booleans here: `{key}: {b}`"
                    ))
                    .suggest(b.to_string());
            }
            if wants("array") {
                let fixed = format!("[{}]", inline(found));
                return e
                    .hint(format!("write it as a list: `{key}: {fixed}`"))
                    .suggest(fixed);
            }
            e
        }
        Value::Number(_) | Value::Bool(_) if wants("string") => {
            let fixed = format!("\"{}\"", found);
            e.hint(format!("quote it to make it text: `{key}: {fixed}`"))
                .suggest(fixed)
        }
        Value::Null if wants("object") => e
            .hint(format!(
                "`{key}:` has nothing under it: indent its fields under it, or write `{key}: {{}}`"
            ))
            .suggest("{}"),
        Value::Null => e.hint(format!("give `{key}:` a value, or remove the line")),
        Value::Array(_) if wants("object") => e.hint(format!(
            "write `name: value` lines under `{key}:`, not `- item` entries"
        )),
        Value::Number(n) if wants("integer") && n.as_f64().is_some() => {
            let rounded = n.as_f64().unwrap_or_default().round();
            let fixed = format!("{rounded:.0}");
            e.hint(format!("write a whole number, such as `{key}: {fixed}`"))
                .suggest(fixed)
        }
        Value::Number(_) | Value::Bool(_) if wants("array") => {
            let fixed = format!("[{found}]");
            e.hint(format!("write it as a list: `{key}: {fixed}`"))
                .suggest(fixed)
        }
        _ => e,
    }
}

/// The forms a `oneOf`/`anyOf` node lists, in words: "a whole number or text".
fn forms(node: Option<&Value>) -> Option<String> {
    let node = node?;
    let branches = node
        .get("oneOf")
        .or_else(|| node.get("anyOf"))?
        .as_array()?;
    let words: Vec<String> = branches
        .iter()
        .map(|b| {
            b.get("description")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| expected_types(Some(b)))
        })
        .collect::<Option<Vec<_>>>()?;
    (!words.is_empty()).then(|| words.join(", or "))
}

fn bound(
    field: &str,
    how: &str,
    limit: &Value,
    f: String,
    rule: &'static str,
    node: Option<&Value>,
) -> Explained {
    let e = Explained::new(rule, format!("{field} must be {how} {limit}; found {f}"))
        .expected(format!("{how} {limit}"))
        .found(f);
    let lo = node.and_then(|n| n.get("minimum"));
    let hi = node.and_then(|n| n.get("maximum"));
    match (lo, hi) {
        (Some(lo), Some(hi)) => e.hint(format!("use a number from {lo} to {hi}")),
        _ => e.hint(format!("use a number {how} {limit}")),
    }
}

fn count(
    field: &str,
    how: &str,
    limit: u64,
    found: &Value,
    what: &str,
    rule: &'static str,
) -> Explained {
    let n = match found {
        Value::Array(a) => a.len(),
        Value::Object(m) => m.len(),
        _ => 0,
    };
    Explained::new(
        rule,
        format!(
            "{field} must have {how} {limit} {what}{}; found {n}",
            plural(limit)
        ),
    )
    .expected(format!("{how} {limit} {what}{}", plural(limit)))
    .found(format!("{n} {what}{}", plural(n as u64)))
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The name in `known` a writer most likely meant: the same name in another case first,
/// then the nearest by edits.
pub fn nearest(wanted: &str, known: &[String]) -> Option<String> {
    let w = wanted.trim();
    if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(w)) {
        return Some(k.clone());
    }
    // `prod` for `production`: one known name that the value begins.
    let lower = w.to_ascii_lowercase();
    let starts: Vec<&String> = known
        .iter()
        .filter(|k| lower.len() >= 2 && k.to_ascii_lowercase().starts_with(&lower))
        .collect();
    if let [one] = starts.as_slice() {
        return Some((*one).clone());
    }
    closest(&w.to_ascii_lowercase(), known.iter().map(String::as_str)).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(steps: &[&str]) -> Vec<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_values_and_types_are_named_as_a_writer_names_them() {
        assert_eq!(
            field_name(&at(&["params", "hosts", "2"])),
            "`params.hosts[2]`"
        );
        assert_eq!(field_name(&[]), "the request");
        assert_eq!(describe(&json!(-5)), "the number -5");
        assert_eq!(describe(&json!("echo ")), "the text `\"echo \"`");
        assert_eq!(describe(&json!(null)), "nothing (an empty value)");
        assert_eq!(describe(&json!([1, 2])), "a list of 2 items");
        assert_eq!(describe(&json!({"a": 1})), "a mapping with one field");
        assert_eq!(
            expected_types(Some(&json!({"type": ["integer", "string"]}))).as_deref(),
            Some("a whole number or text")
        );
        let long = "x".repeat(100);
        assert!(show(&json!(long)).ends_with("… (100 characters)`"));
    }

    #[test]
    fn a_timeout_says_its_forms_and_fixes_what_it_can() {
        for (found, suggestion) in [
            (json!(-5), None),
            (json!(0), None),
            (json!("5 minutes"), Some("5m")),
            (json!("5 m"), Some("5m")),
            (json!("2 hours"), Some("2h")),
            (json!("1d"), Some("24h")),
            (json!("90 sec"), Some("90s")),
            (json!(1.5), Some("1500ms")),
            (json!("soon"), None),
            (json!(true), None),
        ] {
            let e = timeout(&found);
            assert_eq!(e.rule, "invalid-timeout");
            assert!(e.message.contains(TIMEOUT_FORMS), "{e:?}");
            assert_eq!(e.suggestion.as_deref(), suggestion, "{found}");
            assert!(e.hint.is_some() && e.found.is_some(), "{e:?}");
        }
        let e = timeout(&json!(-5));
        assert!(e.hint.unwrap().starts_with(
            "a timeout is a positive number of seconds or a duration such as 30s, 5m, 1h"
        ));
    }

    #[test]
    fn a_kind_names_case_and_spaces() {
        let e = kind_value(&json!("PROBE"));
        assert!(e.message.contains("lowercase"), "{e:?}");
        assert_eq!(e.suggestion.as_deref(), Some("probe"));
        let e = kind_value(&json!(" echo "));
        assert!(e.message.contains("leading and trailing spaces"), "{e:?}");
        assert_eq!(e.suggestion.as_deref(), Some("echo"));
        let e = kind_value(&json!("a b"));
        assert_eq!(e.suggestion.as_deref(), Some("a-b"));
        assert_eq!(kind_value(&json!("")).message, "`kind` is empty");
        assert!(kind_value(&json!(7)).message.contains("the number 7"));
    }

    #[test]
    fn an_id_says_its_length_or_its_first_bad_character() {
        let e = id_value(&"a".repeat(129));
        assert_eq!(
            e.message,
            "`id` is 129 characters long; at most 128 are allowed"
        );
        assert_eq!(e.found.as_deref(), Some("129 characters"));
        let e = id_value("../x");
        assert!(e.message.contains("contains `/`"), "{e:?}");
        assert_eq!(e.suggestion.as_deref(), Some("x"));
        let e = id_value(".hidden");
        assert!(
            e.message.contains("must start with a letter or digit"),
            "{e:?}"
        );
        assert!(id_value("a b").message.contains("a space"));
    }

    #[test]
    fn each_keyword_is_explained_in_words() {
        use jsonschema::error::ValidationErrorKind as K;
        let node = json!({"type": "integer", "minimum": 0, "maximum": 10});
        let steps = at(&["params", "n"]);
        let here = At {
            steps: &steps,
            node: Some(&node),
        };
        let cases: Vec<(K, serde_json::Value, &str, &str)> = vec![
            (
                K::Maximum { limit: json!(10) },
                json!(11),
                "too-large",
                "use a number from 0 to 10",
            ),
            (
                K::Minimum { limit: json!(0) },
                json!(-1),
                "too-small",
                "use a number from 0 to 10",
            ),
            (
                K::MaxLength { limit: 3 },
                json!("abcd"),
                "too-long",
                "shorten it to at most 3 characters",
            ),
            (
                K::UniqueItems,
                json!(["a", "a"]),
                "duplicate-item",
                "`n: [a]`",
            ),
            (
                K::Enum {
                    options: std::sync::Arc::new(json!(["staging", "production"])),
                },
                json!("Staging"),
                "not-allowed-value",
                "did you mean `staging`?",
            ),
            (
                K::Pattern {
                    pattern: "^[a-z]+$".into(),
                },
                json!("abc "),
                "invalid-value",
                "remove the space",
            ),
            (
                K::Required {
                    property: json!("name"),
                },
                json!({}),
                "missing-field",
                "add `name:`",
            ),
            (
                K::AdditionalProperties {
                    unexpected: vec!["nn".into()],
                },
                json!({"nn": 1}),
                "unknown-field",
                "remove it",
            ),
        ];
        for (kind, found, rule, hint) in cases {
            let e = explain(Origin::Params, &kind, &found, &here);
            assert_eq!(e.rule, rule, "{e:?}");
            assert!(
                e.hint.as_deref().unwrap_or_default().contains(hint),
                "{e:?}"
            );
            assert!(e.found.is_some(), "{e:?}");
        }
        let e = by_keyword(
            &K::Type {
                kind: jsonschema::error::TypeKind::Single(jsonschema::JsonType::Integer),
            },
            &json!("7"),
            &here,
        );
        assert_eq!((e.rule, e.suggestion.as_deref()), ("wrong-type", Some("7")));
    }

    #[test]
    fn the_nearest_name_prefers_case_then_prefix_then_edits() {
        let known: Vec<String> = ["staging", "production", "echo"].map(String::from).to_vec();
        assert_eq!(nearest("PRODUCTION", &known).as_deref(), Some("production"));
        assert_eq!(nearest("prod", &known).as_deref(), Some("production"));
        assert_eq!(nearest("ecoh", &known).as_deref(), Some("echo"));
        assert_eq!(nearest("zzz", &known), None);
    }
}
