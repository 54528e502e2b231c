//! `handlers/index.yml`: which kind runs which script, in which image, with which limits.
//!
//! Adding a handler is a script and one entry here; no Rust changes. Everything an entry says
//! is checked when the index is loaded, so a broken entry is reported before anything runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

mod entry;

pub use entry::{env_name_ok, normalize_under};

use super::request::Schema;
use super::yaml;
use super::{closest, Violation, Violations};
use entry::{check_entry, EntryFile};

/// The JSON Schema of `handlers/index.yml` (for editors; the runner checks the file itself).
pub const INDEX_SCHEMA: &str = include_str!("../index.schema.json");

/// Where the handler index lives in the repository.
pub const INDEX_PATH: &str = "handlers/index.yml";
/// Timeout of a handler whose entry sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    handlers: BTreeMap<String, EntryFile>,
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
    /// The OCI runtime its container runs under (`runsc` for gVisor); the engine's default
    /// when `None`. The host config must allow it (`limits.runtimes`).
    pub runtime: Option<String>,
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
