//! `handlers/index.yml`: which kind runs which script, in which image, with which limits.
//!
//! Adding a handler is a script and one entry here; no Rust changes. Everything an entry says
//! is checked when the index is loaded, so a broken entry is reported before anything runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::request::Schema;
use super::units::{parse_duration, parse_size};
use super::yaml::{self, locate};
use super::{closest, Violation, Violations};

/// Where the handler index lives in the repository.
pub const INDEX_PATH: &str = "handlers/index.yml";
/// Timeout of a handler whose entry sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    handlers: BTreeMap<String, EntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    description: Option<String>,
    run: String,
    image: Option<String>,
    build: Option<String>,
    timeout: Option<String>,
    resource: Option<String>,
    network: Option<String>,
    checkout: Option<String>,
    params: Option<Value>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<String>,
    pids: Option<i64>,
    cpus: Option<f64>,
    tmpfs: Option<String>,
    user: Option<String>,
    read_only_root: Option<bool>,
}

/// How much of the repository a handler's checkout holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CheckoutScope {
    /// The tree at the merge commit without the outbox and the archive (`output_path`,
    /// `processed_path`), which grow with every finished request: the default.
    #[default]
    Lean,
    /// The whole tree, past results and archived requests included.
    Full,
}

/// Container network of a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// No network at all (the default).
    None,
    /// The host's network namespace.
    Host,
}

impl Network {
    /// The name used in `index.yml` and by Docker.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// How a secret reaches a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretDelivery {
    /// An environment variable of the secret's name.
    Env,
    /// A file of the secret's name under `/run/secrets`, on a tmpfs, readable by the
    /// handler's user only (not visible in `docker inspect`, unlike the environment).
    File,
}

/// Where a handler's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image reference, used if present locally, pulled otherwise.
    Reference(String),
    /// A directory under `containers/` holding a Dockerfile.
    Build(String),
}

/// What a handler asks of its container; checked against the host's ceilings later.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (default 512 MiB).
    pub memory: u64,
    /// Maximum number of processes (default 256).
    pub pids: i64,
    /// CPUs (default 1.0).
    pub cpus: f64,
    /// Size of the `/tmp` tmpfs in bytes (default 64 MiB).
    pub tmpfs: u64,
    /// `uid:gid` the handler runs as (default `65534:65534`).
    pub user: String,
    /// Whether `/` is read-only (default true).
    pub read_only_root: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 512 << 20,
            pids: 256,
            cpus: 1.0,
            tmpfs: 64 << 20,
            user: "65534:65534".into(),
            read_only_root: true,
        }
    }
}

/// One piece of a resource template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Kind,
    Id,
    Param(Vec<String>),
}

/// A lock-key template such as `{{ params.service }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTemplate(Vec<Part>);

impl ResourceTemplate {
    /// Parse `text`; placeholders are `{{ kind }}`, `{{ id }}` and `{{ params.a.b }}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{text}` has `{{{{` without `}}}}`"))?;
            let name = after[..close].trim();
            parts.push(match name {
                "kind" => Part::Kind,
                "id" => Part::Id,
                _ => match name.strip_prefix("params.") {
                    Some(path) if path.split('.').all(|s| !s.is_empty()) => {
                        Part::Param(path.split('.').map(str::to_string).collect())
                    }
                    _ => {
                        return Err(format!(
                            "`{name}` is not a placeholder; use {{{{ kind }}}}, {{{{ id }}}} or {{{{ params.NAME }}}}"
                        ))
                    }
                },
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("the resource template is empty".into());
        }
        Ok(ResourceTemplate(parts))
    }

    /// Fill the template in for a request; a missing or non-scalar parameter is an error.
    pub fn render(
        &self,
        kind: &str,
        id: &str,
        params: &Map<String, Value>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Kind => out.push_str(kind),
                Part::Id => out.push_str(id),
                Part::Param(path) => {
                    let mut node: Option<&Value> = params.get(&path[0]);
                    for step in &path[1..] {
                        node = node.and_then(|n| n.get(step));
                    }
                    match node {
                        Some(Value::String(s)) if !s.is_empty() => out.push_str(s),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                        _ => {
                            return Err(format!(
                                "the handler locks on `params.{}`, which this request does not set to a string or number",
                                path.join(".")
                            ))
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// One validated handler entry.
#[derive(Debug)]
pub struct HandlerSpec {
    /// The kind this entry serves.
    pub kind: String,
    /// One line for `handlers list`.
    pub description: String,
    /// Script path in the repository, under `handlers/`.
    pub run: String,
    /// Where the image comes from.
    pub image: ImageSource,
    /// Longest a run may take.
    pub timeout: Duration,
    /// Lock-key template (default: the kind).
    pub resource: ResourceTemplate,
    /// The template as written.
    pub resource_text: String,
    /// Container network.
    pub network: Network,
    /// What its checkout of the repository holds.
    pub checkout: CheckoutScope,
    /// JSON Schema for `params`, if the entry has one.
    pub params: Option<Schema>,
    /// Fixed environment values.
    pub env: BTreeMap<String, String>,
    /// Host secrets this handler gets, by name, and how.
    pub secrets: BTreeMap<String, SecretDelivery>,
    /// Container limits asked for.
    pub limits: Limits,
}

/// What the repository holds at a path, as far as the index cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A regular file with the executable bit.
    Executable,
    /// A regular file without it.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
}

/// The parsed handler index.
#[derive(Debug)]
pub struct HandlerIndex {
    /// Entries by kind.
    pub handlers: BTreeMap<String, Arc<HandlerSpec>>,
}

/// A kind the index has no entry for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind `{kind}`")]
pub struct UnknownKind {
    /// The kind asked for.
    pub kind: String,
    /// Every kind the index serves, in order.
    pub known: Vec<String>,
    /// The known kind closest to the one asked for, if one is close.
    pub closest: Option<String>,
}

impl UnknownKind {
    /// What a writer can do about it: the kinds there are, and the one probably meant.
    pub fn hint(&self) -> String {
        let mut hint = format!("known kinds: {}", self.known.join(", "));
        if let Some(c) = &self.closest {
            hint.push_str(&format!(" (did you mean `{c}`?)"));
        }
        hint
    }
}

impl HandlerIndex {
    /// Parse and check `handlers/index.yml`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Violations> {
        let file = INDEX_PATH;
        let text = yaml::text(file, bytes)?;
        let raw: IndexFile = yaml::parse(file, text)?;
        let mut handlers = BTreeMap::new();
        let mut errors = Vec::new();
        for (kind, entry) in raw.handlers {
            match check_entry(text, &kind, entry) {
                Ok(spec) => {
                    handlers.insert(kind, Arc::new(spec));
                }
                Err(mut v) => errors.append(&mut v),
            }
        }
        if errors.is_empty() {
            Ok(HandlerIndex { handlers })
        } else {
            Err(Violations(errors))
        }
    }

    /// The handler for `kind`.
    pub fn route(&self, kind: &str) -> Result<&Arc<HandlerSpec>, UnknownKind> {
        self.handlers.get(kind).ok_or_else(|| {
            let known: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
            UnknownKind {
                kind: kind.to_string(),
                closest: closest(kind, known.iter().copied()).map(str::to_string),
                known: known.into_iter().map(str::to_string).collect(),
            }
        })
    }

    /// Check that every script exists as an executable file and every build dir has a Dockerfile.
    pub fn check_files(&self, lookup: impl Fn(&str) -> Option<PathKind>) -> Result<(), Violations> {
        let mut errors = Vec::new();
        for spec in self.handlers.values() {
            match lookup(&spec.run) {
                Some(PathKind::Executable) => {}
                Some(PathKind::File) => errors.push(
                    Violation::new(
                        INDEX_PATH,
                        "not-executable",
                        format!(
                            "handler `{}`: `{}` is not executable in git",
                            spec.kind, spec.run
                        ),
                    )
                    .hint(format!("git update-index --chmod=+x {}", spec.run)),
                ),
                Some(PathKind::Symlink) => errors.push(Violation::new(
                    INDEX_PATH,
                    "symlink",
                    format!(
                        "handler `{}`: `{}` is a symbolic link; handlers must be regular files",
                        spec.kind, spec.run
                    ),
                )),
                Some(PathKind::Dir) | None => errors.push(
                    Violation::new(
                        INDEX_PATH,
                        "missing-script",
                        format!("handler `{}`: `{}` does not exist", spec.kind, spec.run),
                    )
                    .hint("add the script, or fix `run:`"),
                ),
            }
            if let ImageSource::Build(dir) = &spec.image {
                let dockerfile = format!("containers/{dir}/Dockerfile");
                if !matches!(
                    lookup(&dockerfile),
                    Some(PathKind::File | PathKind::Executable)
                ) {
                    errors.push(
                        Violation::new(
                            INDEX_PATH,
                            "missing-dockerfile",
                            format!("handler `{}`: `{dockerfile}` does not exist", spec.kind),
                        )
                        .hint("add the Dockerfile, or use `image:` instead of `build:`"),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Violations(errors))
        }
    }
}

fn check_entry(text: &str, kind: &str, e: EntryFile) -> Result<HandlerSpec, Vec<Violation>> {
    let at = |field: &str| locate(text, &["handlers".into(), kind.into(), field.into()], false);
    let bad = |field: &str, rule: &'static str, msg: String| {
        Violation::new(INDEX_PATH, rule, format!("handler `{kind}`: {msg}")).at(at(field))
    };
    let mut errors = Vec::new();
    let kind_ok = kind.len() <= 64
        && kind.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !kind_ok {
        errors.push(
            Violation::new(
                INDEX_PATH,
                "invalid-kind",
                format!("`{kind}` is not a valid kind"),
            )
            .at(locate(text, &["handlers".into(), kind.into()], true))
            .hint("use lowercase letters, digits, `_` and `-`"),
        );
    }
    let run = match normalize_under(&e.run, "handlers/") {
        Ok(p) => p,
        Err(m) => {
            errors.push(bad("run", "invalid-run", m).hint("e.g. `run: handlers/deploy.sh`"));
            String::new()
        }
    };
    let image = match (e.image, e.build) {
        (Some(i), None) if valid_image_ref(&i) => ImageSource::Reference(i),
        (Some(i), None) => {
            errors.push(bad(
                "image",
                "invalid-image",
                format!("`{i}` is not an image reference"),
            ));
            ImageSource::Reference(i)
        }
        (None, Some(b)) => {
            let ok = !b.is_empty()
                && b.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !b.starts_with('.');
            if !ok {
                errors.push(
                    bad(
                        "build",
                        "invalid-build",
                        format!("`{b}` is not a directory name under containers/"),
                    )
                    .hint(
                        "name one directory, e.g. `build: deploy` for containers/deploy/Dockerfile",
                    ),
                );
            }
            ImageSource::Build(b)
        }
        (Some(_), Some(_)) => {
            errors.push(
                bad(
                    "build",
                    "image-and-build",
                    "sets both `image` and `build`".into(),
                )
                .hint("keep one"),
            );
            ImageSource::Build(String::new())
        }
        (None, None) => {
            errors.push(
                Violation::new(
                    INDEX_PATH,
                    "no-image",
                    format!("handler `{kind}`: sets neither `image` nor `build`"),
                )
                .at(locate(text, &["handlers".into(), kind.into()], true))
                .hint("add `image: codex-runner/busybox:1` or `build: <dir under containers/>`"),
            );
            ImageSource::Build(String::new())
        }
    };
    let timeout = match e.timeout.as_deref().map(parse_duration) {
        None => DEFAULT_TIMEOUT,
        Some(Ok(d)) => d,
        Some(Err(m)) => {
            errors.push(bad("timeout", "invalid-timeout", m));
            DEFAULT_TIMEOUT
        }
    };
    let resource_text = e.resource.clone().unwrap_or_else(|| kind.to_string());
    let resource = match ResourceTemplate::parse(&resource_text) {
        Ok(t) => t,
        Err(m) => {
            errors.push(bad("resource", "invalid-resource", m));
            ResourceTemplate(vec![Part::Kind])
        }
    };
    let network = match e.network.as_deref() {
        None | Some("none") => Network::None,
        Some("host") => Network::Host,
        Some(other) => {
            errors.push(bad(
                "network",
                "invalid-network",
                format!("network `{other}` is not `none` or `host`"),
            ));
            Network::None
        }
    };
    let checkout = match e.checkout.as_deref() {
        None | Some("lean") => CheckoutScope::Lean,
        Some("full") => CheckoutScope::Full,
        Some(other) => {
            errors.push(
                bad(
                    "checkout",
                    "invalid-checkout",
                    format!("checkout `{other}` is not `lean` or `full`"),
                )
                .hint("`lean` (the default) leaves out the results and archived requests; `full` shows them too"),
            );
            CheckoutScope::Lean
        }
    };
    let params = match e.params {
        None => None,
        Some(doc) => match Schema::compile(doc) {
            Ok(s) => Some(s),
            Err(m) => {
                errors.push(bad(
                    "params",
                    "invalid-schema",
                    format!("the params schema does not compile: {m}"),
                ));
                None
            }
        },
    };
    for key in e.env.keys() {
        if !env_name_ok(key) {
            errors.push(
                bad(
                    "env",
                    "invalid-env",
                    format!("environment name `{key}` is not allowed"),
                )
                .hint("use UPPER_CASE names; CODEX_* is reserved for the runner"),
            );
        }
    }
    let mut secrets = BTreeMap::new();
    for (name, how) in &e.secrets {
        let bad_secret = |msg: String| {
            Violation::new(
                INDEX_PATH,
                "invalid-secret",
                format!("handler `{kind}`: {msg}"),
            )
            .at(locate(
                text,
                &[
                    "handlers".into(),
                    kind.into(),
                    "secrets".into(),
                    name.into(),
                ],
                true,
            ))
        };
        let delivery = match how.as_str() {
            "env" => SecretDelivery::Env,
            "file" => SecretDelivery::File,
            other => {
                errors.push(
                    bad_secret(format!("secret `{name}`: `{other}` is not `env` or `file`"))
                        .hint("e.g. `secrets: {DEPLOY_TOKEN: file}`"),
                );
                continue;
            }
        };
        if !env_name_ok(name) {
            errors.push(
                bad_secret(format!("secret name `{name}` is not allowed"))
                    .hint("use the UPPER_CASE name the host config gives it; CODEX_* is reserved"),
            );
        } else if delivery == SecretDelivery::Env && e.env.contains_key(name) {
            errors.push(bad_secret(format!(
                "secret `{name}` is also set under `env`"
            )));
        }
        secrets.insert(name.clone(), delivery);
    }
    let mut limits = Limits::default();
    let lim = e.limits;
    let lim_at = |f: &str| {
        locate(
            text,
            &["handlers".into(), kind.into(), "limits".into(), f.into()],
            false,
        )
    };
    let lim_bad = |f: &str, m: String| {
        Violation::new(
            INDEX_PATH,
            "invalid-limit",
            format!("handler `{kind}`: limits.{f}: {m}"),
        )
        .at(lim_at(f))
    };
    if let Some(m) = lim.memory {
        match parse_size(&m) {
            Ok(v) if v >= 4 << 20 => limits.memory = v,
            Ok(_) => errors.push(lim_bad("memory", "must be at least 4MiB".into())),
            Err(msg) => errors.push(lim_bad("memory", msg)),
        }
    }
    if let Some(t) = lim.tmpfs {
        match parse_size(&t) {
            Ok(v) => limits.tmpfs = v,
            Err(msg) => errors.push(lim_bad("tmpfs", msg)),
        }
    }
    if let Some(p) = lim.pids {
        if p < 1 {
            errors.push(lim_bad("pids", "must be at least 1".into()));
        }
        limits.pids = p;
    }
    if let Some(c) = lim.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            errors.push(lim_bad("cpus", "must be between 0 and 1024".into()));
        }
        limits.cpus = c;
    }
    if let Some(u) = lim.user {
        let ok = u.split(':').count() <= 2
            && u.split(':')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            errors.push(lim_bad(
                "user",
                format!("`{u}` is not `uid` or `uid:gid` in numbers"),
            ));
        }
        limits.user = u;
    }
    if let Some(r) = lim.read_only_root {
        limits.read_only_root = r;
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(HandlerSpec {
        kind: kind.to_string(),
        description: e.description.unwrap_or_default(),
        run,
        image,
        timeout,
        resource,
        resource_text,
        network,
        checkout,
        params,
        env: e.env,
        secrets,
        limits,
    })
}

/// Whether `key` may be set in a handler's environment: UPPER_CASE, not `CODEX_*`.
pub fn env_name_ok(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !key.starts_with("CODEX_")
}

/// Normalize a repository-relative path and require it to stay under `dir`.
pub fn normalize_under(path: &str, dir: &str) -> Result<String, String> {
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err(format!("`{path}` must be a relative path under {dir}"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("`{path}` escapes {dir} with `..`"));
    }
    let joined = parts.join("/");
    if !joined.starts_with(dir) || joined.len() == dir.len() {
        return Err(format!("`{path}` is not under {dir}"));
    }
    Ok(joined)
}

fn valid_image_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && !r.starts_with(['-', '.', ':', '/'])
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"
handlers:
  echo:
    description: Print a message.
    run: handlers/echo.sh
    image: codex-runner/busybox:1
    timeout: 1m
    params:
      type: object
      required: [message]
  deploy:
    run: handlers/deploy.sh
    build: deploy
    resource: "svc-{{ params.service }}"
    network: host
    env:
      TARGET: prod
    secrets:
      DEPLOY_TOKEN: env
      SSH_KEY: file
    limits:
      memory: 256MiB
      pids: 64
"#;

    #[test]
    fn parses_entries_with_defaults() {
        let idx = HandlerIndex::parse(INDEX.as_bytes()).unwrap();
        let echo = idx.route("echo").unwrap();
        assert_eq!(echo.timeout, Duration::from_secs(60));
        assert_eq!(echo.network, Network::None);
        assert_eq!(echo.limits, Limits::default());
        assert!(echo.params.is_some());
        let deploy = idx.route("deploy").unwrap();
        assert_eq!(deploy.image, ImageSource::Build("deploy".into()));
        assert_eq!(deploy.limits.memory, 256 << 20);
        assert_eq!(deploy.timeout, DEFAULT_TIMEOUT);
        assert_eq!(deploy.secrets["DEPLOY_TOKEN"], SecretDelivery::Env);
        assert_eq!(deploy.secrets["SSH_KEY"], SecretDelivery::File);
        assert!(echo.secrets.is_empty());
        let params = serde_json::json!({"service": "web"});
        let rendered = deploy
            .resource
            .render("deploy", "d1", params.as_object().unwrap());
        assert_eq!(rendered.unwrap(), "svc-web");
        assert_eq!(
            echo.resource.render("echo", "x", &Map::new()).unwrap(),
            "echo"
        );
    }

    #[test]
    fn unknown_kind_suggests() {
        let idx = HandlerIndex::parse(INDEX.as_bytes()).unwrap();
        let err = idx.route("deplyo").unwrap_err();
        assert_eq!(err.to_string(), "unknown kind `deplyo`");
        assert_eq!(
            err.hint(),
            "known kinds: deploy, echo (did you mean `deploy`?)"
        );
    }

    #[test]
    fn bad_entries_are_located() {
        let text = "handlers:\n  x:\n    run: ../etc/passwd\n    image: busybox\n    network: bridge\n    checkout: everything\n";
        let err = HandlerIndex::parse(text.as_bytes()).unwrap_err();
        let rules: Vec<_> = err.0.iter().map(|v| (&*v.rule, v.line)).collect();
        assert_eq!(
            rules,
            vec![
                ("invalid-run", Some(3)),
                ("invalid-network", Some(5)),
                ("invalid-checkout", Some(6))
            ]
        );
        let full = HandlerIndex::parse(
            b"handlers:\n  x:\n    run: handlers/x.sh\n    image: a\n    checkout: full\n",
        )
        .unwrap();
        assert_eq!(full.handlers["x"].checkout, CheckoutScope::Full);
        assert_eq!(
            HandlerIndex::parse(INDEX.as_bytes()).unwrap().handlers["echo"].checkout,
            CheckoutScope::Lean,
            "lean unless asked"
        );
        let err = HandlerIndex::parse(
            b"handlers:\n  x:\n    run: handlers/x.sh\n    image: a\n    env: {A: b}\n    secrets:\n      A: env\n      b: env\n      C: disk\n",
        )
        .unwrap_err();
        let msgs: Vec<_> = err
            .0
            .iter()
            .map(|v| (&*v.rule, v.line, v.message.clone()))
            .collect();
        let lines: Vec<_> = msgs.iter().map(|(r, l, _)| (*r, *l)).collect();
        assert_eq!(
            lines,
            [
                ("invalid-secret", Some(7)),
                ("invalid-secret", Some(9)),
                ("invalid-secret", Some(8))
            ],
            "{err}"
        );
        let err = HandlerIndex::parse(b"handlers:\n  x:\n    run: handlers/x.sh\n").unwrap_err();
        assert_eq!(err.0[0].rule, "no-image");
        let err = HandlerIndex::parse(
            b"handlers:\n  x:\n    run: handlers/x.sh\n    image: a\n    colour: red\n",
        )
        .unwrap_err();
        assert_eq!(err.0[0].line, Some(5), "{err}");
    }

    #[test]
    fn templates() {
        assert!(ResourceTemplate::parse("{{ nope }}").is_err());
        assert!(ResourceTemplate::parse("{{ params.a").is_err());
        let t = ResourceTemplate::parse("{{kind}}/{{ params.a.b }}").unwrap();
        let p = serde_json::json!({"a": {"b": 3}});
        assert_eq!(t.render("k", "i", p.as_object().unwrap()).unwrap(), "k/3");
        assert!(t.render("k", "i", &Map::new()).is_err());
    }

    #[test]
    fn paths_stay_under_handlers() {
        assert_eq!(
            normalize_under("handlers/./a.sh", "handlers/").unwrap(),
            "handlers/a.sh"
        );
        assert!(normalize_under("handlers/../src/main.rs", "handlers/").is_err());
        assert!(normalize_under("/handlers/a.sh", "handlers/").is_err());
        assert!(normalize_under("handlers/", "handlers/").is_err());
    }

    #[test]
    fn check_files_requires_executables_and_dockerfiles() {
        let idx = HandlerIndex::parse(INDEX.as_bytes()).unwrap();
        let err = idx
            .check_files(|p| match p {
                "handlers/echo.sh" => Some(PathKind::File),
                "handlers/deploy.sh" => Some(PathKind::Executable),
                _ => None,
            })
            .unwrap_err();
        let rules: Vec<_> = err.0.iter().map(|v| &*v.rule).collect();
        assert_eq!(rules, vec!["missing-dockerfile", "not-executable"]);
    }
}
