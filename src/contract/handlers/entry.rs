//! One entry of the handler index, checked field by field: every broken field is reported at
//! its line, with a hint, before anything runs.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::super::request::Schema;
use super::super::units::{parse_duration, parse_size};
use super::super::yaml::locate;
use super::super::Violation;
use super::{
    CheckoutScope, HandlerSpec, ImageSource, Limits, Network, Part, ResourceTemplate,
    SecretDelivery, DEFAULT_TIMEOUT, INDEX_PATH,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryFile {
    description: Option<String>,
    run: String,
    image: Option<String>,
    build: Option<String>,
    timeout: Option<String>,
    resource: Option<String>,
    network: Option<String>,
    checkout: Option<String>,
    runtime: Option<String>,
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

/// Where an entry's fields are in the index text, for violations that point at them.
struct Place<'a> {
    text: &'a str,
    kind: &'a str,
}

impl Place<'_> {
    /// The position of `path` under the entry (its key when `key`).
    fn at(&self, path: &[&str], key: bool) -> Option<(usize, usize)> {
        let mut steps = vec!["handlers".to_string(), self.kind.to_string()];
        steps.extend(path.iter().map(|s| s.to_string()));
        locate(self.text, &steps, key)
    }

    /// A violation of `rule` at the entry's `field`.
    fn bad(&self, field: &str, rule: &'static str, msg: String) -> Violation {
        Violation::new(INDEX_PATH, rule, format!("handler `{}`: {msg}", self.kind))
            .at(self.at(&[field], false))
    }
}

/// Check one entry of the index: the handler spec, or every field that is wrong.
pub(super) fn check_entry(
    text: &str,
    kind: &str,
    e: EntryFile,
) -> Result<HandlerSpec, Vec<Violation>> {
    let place = Place { text, kind };
    let mut errors = Vec::new();
    check_kind(&place, &mut errors);
    let run = match normalize_under(&e.run, "handlers/") {
        Ok(p) => p,
        Err(m) => {
            errors.push(
                place
                    .bad("run", "invalid-run", m)
                    .hint("e.g. `run: handlers/deploy.sh`"),
            );
            String::new()
        }
    };
    let image = image_source(&place, e.image, e.build, &mut errors);
    let timeout = match e.timeout.as_deref().map(parse_duration) {
        None => DEFAULT_TIMEOUT,
        Some(Ok(d)) => d,
        Some(Err(m)) => {
            errors.push(place.bad("timeout", "invalid-timeout", m));
            DEFAULT_TIMEOUT
        }
    };
    let resource_text = e.resource.clone().unwrap_or_else(|| kind.to_string());
    let resource = match ResourceTemplate::parse(&resource_text) {
        Ok(t) => t,
        Err(m) => {
            errors.push(place.bad("resource", "invalid-resource", m));
            ResourceTemplate(vec![Part::Kind])
        }
    };
    let network = match e.network.as_deref() {
        None | Some("none") => Network::None,
        Some("host") => Network::Host,
        Some(other) => {
            errors.push(place.bad(
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
                place
                    .bad(
                        "checkout",
                        "invalid-checkout",
                        format!("checkout `{other}` is not `lean` or `full`"),
                    )
                    .hint("`lean` (the default) leaves out the results and archived requests; `full` shows them too"),
            );
            CheckoutScope::Lean
        }
    };
    let runtime = match e.runtime {
        Some(r) if runtime_name_ok(&r) => Some(r),
        Some(r) => {
            errors.push(
                place
                    .bad(
                        "runtime",
                        "invalid-runtime",
                        format!("`{r}` is not a runtime name"),
                    )
                    .hint("name a runtime the host's Docker engine registers, such as `runsc` (gVisor); leave it out for the engine's default"),
            );
            None
        }
        None => None,
    };
    let params = match e.params {
        None => None,
        Some(doc) => match Schema::compile(doc) {
            Ok(s) => Some(s),
            Err(m) => {
                errors.push(place.bad(
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
                place
                    .bad(
                        "env",
                        "invalid-env",
                        format!("environment name `{key}` is not allowed"),
                    )
                    .hint("use UPPER_CASE names; CODEX_* is reserved for the runner"),
            );
        }
    }
    let secrets = secrets(&place, &e.secrets, &e.env, &mut errors);
    let limits = limits(&place, e.limits, &mut errors);
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
        runtime,
        params,
        env: e.env,
        secrets,
        limits,
    })
}

/// An OCI runtime's name as Docker registers it: `runsc`, `io.containerd.runc.v2`.
fn runtime_name_ok(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A kind is lowercase letters, digits, `_` and `-`, at most 64 of them.
fn check_kind(place: &Place<'_>, errors: &mut Vec<Violation>) {
    let kind = place.kind;
    let ok = kind.len() <= 64
        && kind.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        errors.push(
            Violation::new(
                INDEX_PATH,
                "invalid-kind",
                format!("`{kind}` is not a valid kind"),
            )
            .at(place.at(&[], true))
            .hint("use lowercase letters, digits, `_` and `-`"),
        );
    }
}

/// Where the handler's image comes from: a reference, or one directory under `containers/`
/// to build; exactly one of them.
fn image_source(
    place: &Place<'_>,
    image: Option<String>,
    build: Option<String>,
    errors: &mut Vec<Violation>,
) -> ImageSource {
    match (image, build) {
        (Some(i), None) if valid_image_ref(&i) => ImageSource::Reference(i),
        (Some(i), None) => {
            errors.push(place.bad(
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
                    place
                        .bad(
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
                place
                    .bad(
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
                    format!("handler `{}`: sets neither `image` nor `build`", place.kind),
                )
                .at(place.at(&[], true))
                .hint("add `image: codex-runner/busybox:1` or `build: <dir under containers/>`"),
            );
            ImageSource::Build(String::new())
        }
    }
}

/// The host secrets the handler names, each delivered as `env` or `file`.
fn secrets(
    place: &Place<'_>,
    asked: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
    errors: &mut Vec<Violation>,
) -> BTreeMap<String, SecretDelivery> {
    let mut secrets = BTreeMap::new();
    for (name, how) in asked {
        let bad_secret = |msg: String| {
            Violation::new(
                INDEX_PATH,
                "invalid-secret",
                format!("handler `{}`: {msg}", place.kind),
            )
            .at(place.at(&["secrets", name], true))
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
        } else if delivery == SecretDelivery::Env && env.contains_key(name) {
            errors.push(bad_secret(format!(
                "secret `{name}` is also set under `env`"
            )));
        }
        secrets.insert(name.clone(), delivery);
    }
    secrets
}

/// The container limits the entry asks for, each within what a container can be given.
fn limits(place: &Place<'_>, lim: LimitsFile, errors: &mut Vec<Violation>) -> Limits {
    let mut limits = Limits::default();
    let lim_bad = |f: &str, m: String| {
        Violation::new(
            INDEX_PATH,
            "invalid-limit",
            format!("handler `{}`: limits.{f}: {m}", place.kind),
        )
        .at(place.at(&["limits", f], false))
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
    limits
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
