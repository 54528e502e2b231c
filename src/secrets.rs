//! Handler secrets: where the host keeps them, how they reach the one handler that names
//! them, and the masking that keeps their values out of everything the runner writes.
//!
//! The host config (`[secrets]`) says where each value comes from: the config itself, an
//! environment variable of the runner, or a file. `handlers/index.yml` names, per handler,
//! which secrets it gets and how: as an environment variable, or as a file under a tmpfs
//! mounted read-only at [`SECRETS_MOUNT`]. A secret no handler names never leaves the runner.
//!
//! Every value the runner resolves is registered with a process-wide [`Masker`]; the run log,
//! the status file, commit messages, check-run output and the runner's own tracing pass
//! through [`mask`]. Masked forms: the value, each line of a multi-line value, and their
//! base64 forms (standard and URL-safe, at each of the three byte alignments).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// Where file secrets appear inside the container.
pub const SECRETS_MOUNT: &str = "/run/secrets";
/// What a masked value is replaced with.
pub const MASK: &str = "***";
/// Shortest value accepted as a secret, and shortest derived form that is masked: shorter
/// strings would mask ordinary text all over the log.
pub const MIN_LEN: usize = 4;
/// Where staged secret files live by default (a tmpfs on every Linux host).
pub const DEFAULT_DIR: &str = "/dev/shm/codex-runner";

/// Where the host keeps one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The value, written in the host config.
    Value(String),
    /// An environment variable of the runner process.
    Env(String),
    /// A file, read at every run (so a rotated file takes effect without a restart).
    File(PathBuf),
}

/// `[secrets] NAME = { value | env | file = ... }` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    value: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
}

impl SourceFile {
    /// Exactly one of `value`, `env` and `file`.
    pub fn check(self, name: &str) -> anyhow::Result<Source> {
        anyhow::ensure!(
            crate::contract::handlers::env_name_ok(name),
            "secrets.{name}: secret names are UPPER_CASE environment names, not starting with CODEX_"
        );
        match (self.value, self.env, self.file) {
            (Some(v), None, None) => Ok(Source::Value(v)),
            (None, Some(e), None) => Ok(Source::Env(e)),
            (None, None, Some(f)) => Ok(Source::File(f)),
            _ => anyhow::bail!("secrets.{name}: give exactly one of `value`, `env` or `file`"),
        }
    }
}

/// The secrets this host can give to handlers, and where file secrets are staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSecrets {
    sources: BTreeMap<String, Source>,
    dir: PathBuf,
}

impl Default for HostSecrets {
    fn default() -> Self {
        HostSecrets {
            sources: BTreeMap::new(),
            dir: PathBuf::from(DEFAULT_DIR),
        }
    }
}

impl HostSecrets {
    /// Secrets from `sources`, staged under `dir`.
    pub fn new(sources: BTreeMap<String, Source>, dir: PathBuf) -> Self {
        HostSecrets { sources, dir }
    }

    /// Where file secrets are staged.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files secrets are read from (the runner's user must be able to read them).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.sources.values().filter_map(|s| match s {
            Source::File(f) => Some(f.as_path()),
            _ => None,
        })
    }

    /// Whether any secret is configured.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Resolve every secret once, so a missing variable or file stops the runner at start
    /// with its name, and register every value for masking before anything runs.
    pub fn check_all(&self) -> anyhow::Result<()> {
        for name in self.sources.keys() {
            self.value(name).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The value of secret `name`, registered for masking; the error names the secret and
    /// its source.
    pub fn value(&self, name: &str) -> Result<String, String> {
        let source = self.sources.get(name).ok_or_else(|| {
            format!("secret `{name}` is not defined in this host's config ([secrets] {name})")
        })?;
        let value = match source {
            Source::Value(v) => v.clone(),
            Source::Env(var) => std::env::var(var).map_err(|_| {
                format!("secret `{name}`: the runner's environment variable `{var}` is not set")
            })?,
            Source::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("secret `{name}`: cannot read {}: {e}", path.display()))?;
                String::from_utf8(bytes)
                    .map_err(|_| format!("secret `{name}`: {} is not UTF-8 text", path.display()))?
            }
        };
        if value.trim().chars().count() < MIN_LEN {
            return Err(format!(
                "secret `{name}` is shorter than {MIN_LEN} characters, too short to mask in logs"
            ));
        }
        register(&value);
        Ok(value)
    }
}

/// The strings masked for one secret value: the value, each of its lines, and the base64
/// forms of both, unwrapped and wrapped (longest first, at least [`MIN_LEN`] long).
pub fn patterns(value: &str) -> Vec<String> {
    let mut plain: Vec<&str> = vec![value, value.trim()];
    plain.extend(value.lines().map(str::trim));
    let mut out: Vec<String> = Vec::new();
    for p in &plain {
        if p.chars().count() < MIN_LEN {
            continue;
        }
        out.push(p.to_string());
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            out.extend(base64_cores(engine, p.as_bytes()));
        }
        // `base64` and `openssl base64` wrap their output at 76 and 64 characters: each
        // line of the wrapped text of the value alone.
        let whole =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, p.as_bytes());
        for width in [64, 76] {
            if whole.len() > width {
                let chars: Vec<char> = whole.chars().collect();
                out.extend(chars.chunks(width).map(|c| c.iter().collect::<String>()));
            }
        }
    }
    out.retain(|p| p.len() >= MIN_LEN);
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// The part of the base64 text of `bytes` that does not depend on what surrounds them, for
/// each of the three alignments they can have inside a longer encoded text.
fn base64_cores(engine: &impl base64::Engine, bytes: &[u8]) -> Vec<String> {
    (0..3usize)
        .filter_map(|shift| {
            let mut data = vec![0u8; shift];
            data.extend_from_slice(bytes);
            let text = engine.encode(&data);
            // Characters fully inside the value's bits [8*shift, 8*(shift+n)).
            let first = (8 * shift).div_ceil(6);
            let end = (8 * (shift + bytes.len())) / 6;
            text.get(first..end).map(str::to_string)
        })
        .collect()
}

/// Replaces secret values in text.
#[derive(Debug, Default, Clone)]
pub struct Masker {
    /// Longest first, so a value is masked whole before any of its lines.
    patterns: Vec<String>,
}

impl Masker {
    /// Mask `value` (and its derived forms) from now on.
    pub fn add(&mut self, value: &str) {
        let mut all = std::mem::take(&mut self.patterns);
        all.extend(patterns(value));
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        self.patterns = all;
    }

    /// `text` with every pattern replaced by [`MASK`].
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = Cow::Owned(out.replace(p.as_str(), MASK));
            }
        }
        out
    }

    /// How much of `bytes` to keep so that it does not end in the beginning of a pattern
    /// (output cut off by a cap).
    pub fn before_partial(&self, bytes: &[u8]) -> usize {
        let mut keep = bytes.len();
        for p in &self.patterns {
            let p = p.as_bytes();
            if let Some(k) = (1..p.len())
                .rev()
                .find(|k| bytes[..keep].ends_with(&p[..*k]))
            {
                keep -= k;
            }
        }
        keep
    }

    /// The longest pattern, in bytes.
    pub fn longest(&self) -> usize {
        self.patterns.first().map_or(0, String::len)
    }

    /// A cut at or before `cut` in `bytes` that splits no pattern: a long line cut into pieces
    /// there still has each secret whole in one piece.
    pub fn safe_cut(&self, bytes: &[u8], cut: usize) -> usize {
        let mut cut = cut.min(bytes.len());
        // Moving the cut back may make it split another pattern: go round until none does.
        loop {
            let before = cut;
            for p in &self.patterns {
                let p = p.as_bytes();
                let from = cut.saturating_sub(p.len() - 1);
                let window = &bytes[from..(cut + p.len() - 1).min(bytes.len())];
                // Any match in this window starts before the cut and ends after it.
                if let Some(at) = window.windows(p.len()).position(|w| w == p) {
                    if from + at > 0 {
                        cut = from + at;
                    }
                }
            }
            if cut == before {
                return cut;
            }
        }
    }
}

static GLOBAL: RwLock<Masker> = RwLock::new(Masker {
    patterns: Vec::new(),
});

/// Mask `value` in everything this process writes from now on.
pub fn register(value: &str) {
    if let Ok(mut m) = GLOBAL.write() {
        if !m.patterns.iter().any(|p| p == value) {
            m.add(value);
        }
    }
}

/// `text` with every registered secret masked.
pub fn mask(text: &str) -> Cow<'_, str> {
    match GLOBAL.read() {
        Ok(m) => match m.mask(text) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(s) => Cow::Owned(s),
        },
        Err(_) => Cow::Owned(MASK.into()),
    }
}

/// Mask every string in a JSON value, in place.
pub fn mask_json(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(m) = mask(s) {
                *s = m;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_json),
        Value::Object(map) => map.values_mut().for_each(mask_json),
        _ => {}
    }
}

/// Where to cut a long line of output at or before `cut` without splitting a secret; the
/// caller must have [`longest`] bytes past `cut` to know.
pub fn safe_cut(bytes: &[u8], cut: usize) -> usize {
    GLOBAL.read().map_or(cut, |m| m.safe_cut(bytes, cut))
}

/// How much of `bytes` to keep so it does not end in the beginning of a registered secret.
pub fn before_partial(bytes: &[u8]) -> usize {
    GLOBAL.read().map_or(0, |m| m.before_partial(bytes))
}

/// The longest registered pattern, in bytes.
pub fn longest() -> usize {
    GLOBAL.read().map_or(0, |m| m.longest())
}

/// Standard error with secrets masked: the writer of the runner's tracing.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskedStderr;

/// One tracing event, buffered so it is masked whole.
pub struct MaskedEvent(Vec<u8>);

impl Write for MaskedEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedEvent {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().write_all(mask(&text).as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedEvent;
    fn make_writer(&'a self) -> MaskedEvent {
        MaskedEvent(Vec::new())
    }
}

/// The directory this process stages `container`'s secret files in:
/// `<root>/<container>@<pid>`, so a sweep can tell whose it is.
pub fn staged_path(root: &Path, container: &str) -> PathBuf {
    root.join(format!("{container}@{}", std::process::id()))
}

/// Write `files` for `container` into a fresh directory under `root`, readable only by the
/// handler's `user` (`uid:gid`), and return it for a read-only bind mount. `root` must be
/// on a tmpfs, so a secret never reaches a disk.
pub fn stage(
    root: &Path,
    container: &str,
    files: &[(String, String)],
    user: &str,
) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .with_context(|| format!("failed to create the secrets directory {}", root.display()))?;
    anyhow::ensure!(
        on_tmpfs(root),
        "the secrets directory {} is not on a tmpfs; file secrets are only written to memory (set runner.secrets_dir)",
        root.display()
    );
    let dir = staged_path(root, container);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("failed to clear {}", dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    let mut ids = user.split(':').map(|p| p.parse::<u32>().ok());
    let uid = ids.next().flatten();
    let gid = ids.next().flatten().or(uid);
    let write = || -> std::io::Result<()> {
        for (name, value) in files {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)?;
            f.write_all(value.as_bytes())?;
            std::os::unix::fs::chown(&path, uid, gid)?;
        }
        std::os::unix::fs::chown(&dir, uid, gid)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(anyhow::Error::new(e).context(format!(
            "failed to stage secret files for {container} in {} (the runner must be able to chown them to the handler's user {user})",
            root.display()
        )));
    }
    Ok(dir)
}

/// Remove the secret files staged for `container` by this process.
pub fn unstage(root: &Path, container: &str) {
    let dir = staged_path(root, container);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "failed to remove staged secrets");
        }
    }
}

/// Remove staged secret files that no container of `prefix` still exists for and whose
/// process is gone. `live` names the containers that exist; `alive` says whether a pid is a
/// runner process.
pub fn sweep(root: &Path, prefix: &str, live: &[String], alive: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((container, pid)) = name.rsplit_once('@') else {
            continue;
        };
        if !container.starts_with(prefix) || live.iter().any(|l| l == container) {
            continue;
        }
        if pid.parse::<u32>().is_ok_and(&alive) {
            continue;
        }
        tracing::info!(
            container,
            "removing secret files a dead runner process left"
        );
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Whether `path` is on a tmpfs (or ramfs).
fn on_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return false;
        }
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn masker(values: &[&str]) -> Masker {
        let mut m = Masker::default();
        for v in values {
            m.add(v);
        }
        m
    }

    #[test]
    fn masks_value_lines_and_base64_at_every_alignment() {
        let secret = "s3cr3t-Value!";
        let m = masker(&[secret]);
        assert_eq!(m.mask("token=s3cr3t-Value! ok"), "token=*** ok");
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "a", "ab", "abc"] {
            for suffix in ["", "\n", "x", "xy"] {
                let encoded = b64.encode(format!("{prefix}{secret}{suffix}"));
                let masked = m.mask(&encoded);
                assert!(
                    masked.contains(MASK),
                    "{prefix:?}+{suffix:?}: {encoded} -> {masked}"
                );
                // What is left visible is at most the bits the secret shares with its neighbours.
                let visible = masked.replace(MASK, "");
                assert!(visible.len() <= encoded.len() - 14, "{encoded} -> {masked}");
            }
        }
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("??>>s3cr3t-Value!");
        assert!(m.mask(&url).contains(MASK), "{url}");
    }

    #[test]
    fn masks_each_line_of_a_multi_line_secret() {
        let key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2E\nZZZZqqqq\n-----END KEY-----\n";
        let m = masker(&[key]);
        assert_eq!(m.mask(key), "***");
        assert_eq!(m.mask("line: ZZZZqqqq"), "line: ***");
        assert_eq!(m.mask("  AAAAB3NzaC1yc2E  "), "  ***  ");
        assert_eq!(m.mask("nothing here"), "nothing here");
        // `base64 < key` wraps at 76 characters, `openssl base64` at 64: every line is masked.
        let wrapped = base64::engine::general_purpose::STANDARD.encode(key);
        for width in [64, 76] {
            for line in wrapped.as_bytes().chunks(width) {
                let line = std::str::from_utf8(line).unwrap();
                assert_eq!(m.mask(line), MASK, "{line}");
            }
        }
    }

    #[test]
    fn short_values_are_refused_and_short_lines_not_masked() {
        let m = masker(&["abcd\nxy\n"]);
        assert_eq!(m.mask("xy is fine, abcd is not"), "xy is fine, *** is not");
        let secrets = HostSecrets::new(
            BTreeMap::from([("PIN".to_string(), Source::Value("123".into()))]),
            DEFAULT_DIR.into(),
        );
        let err = secrets.value("PIN").unwrap_err();
        assert!(err.contains("shorter than 4"), "{err}");
        let err = secrets.value("NOPE").unwrap_err();
        assert!(err.contains("[secrets] NOPE"), "{err}");
    }

    #[test]
    fn cuts_never_split_a_secret() {
        let m = masker(&["SECRETVALUE"]);
        let line = b"xxxxxxSECRETVALUEyyyy";
        assert_eq!(m.safe_cut(line, 10), 6);
        assert_eq!(m.safe_cut(line, 6), 6);
        assert_eq!(m.safe_cut(line, 17), 17);
        assert_eq!(m.safe_cut(line, 3), 3);
        // A secret at the very start cannot be moved before: the cut stays.
        assert_eq!(m.safe_cut(b"SECRETVALUEzz", 5), 5);
        assert_eq!(m.before_partial(b"abc SECRE"), 4);
        assert_eq!(m.before_partial(b"abc SECRETVALUE"), 15);
        assert_eq!(m.before_partial(b"abc"), 3);
    }

    #[test]
    fn sources_need_exactly_one_way() {
        let f = SourceFile {
            value: Some("x".into()),
            env: Some("Y".into()),
            file: None,
        };
        assert!(f.check("A").is_err());
        assert!(SourceFile::default().check("A").is_err());
        let f = SourceFile {
            env: Some("Y".into()),
            ..SourceFile::default()
        };
        assert_eq!(f.clone().check("TOKEN").unwrap(), Source::Env("Y".into()));
        assert!(f.clone().check("lower").is_err());
        assert!(f.check("CODEX_X").is_err());
    }

    #[test]
    fn staging_needs_a_tmpfs_and_sweeps_leftovers() {
        let disk = tempfile::tempdir().unwrap();
        let err = stage(disk.path(), "c1", &[("A".into(), "v".into())], "0:0").unwrap_err();
        assert!(format!("{err:#}").contains("not on a tmpfs"), "{err:#}");
        let root = Path::new("/dev/shm").join(format!("codex-runner-test-{}", std::process::id()));
        let dir = stage(
            &root,
            "codex-r-c1",
            &[("TOKEN".into(), "value\n".into())],
            "65534:65534",
        )
        .unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(dir.join("TOKEN")).unwrap();
        assert_eq!(
            (meta.uid(), meta.permissions().mode() & 0o777),
            (65534, 0o400)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("TOKEN")).unwrap(),
            "value\n"
        );
        // Our own process is alive: the sweep leaves it; a dead pid's is removed.
        sweep(&root, "codex-r-", &[], |pid| pid == std::process::id());
        assert!(dir.exists());
        sweep(&root, "codex-r-", &["codex-r-c1".into()], |_| false);
        assert!(
            dir.exists(),
            "a container that still exists keeps its files"
        );
        sweep(&root, "codex-r-", &[], |_| false);
        assert!(!dir.exists());
        let dir = stage(&root, "codex-r-c2", &[("T".into(), "vvvv".into())], "65534").unwrap();
        unstage(&root, "codex-r-c2");
        assert!(!dir.exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
