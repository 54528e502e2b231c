//! The host's runner config (TOML). It adds only what the repository must not decide:
//! the runner's name, its directories, commit identity and the ceilings on container limits.
//! `codex-runner register` will write it; today `dispatch --config` reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::contract::units::{parse_duration, parse_size};
use crate::forge::{Credentials, Report};
use crate::secrets::{HostSecrets, SourceFile};

/// Ceilings a handler entry may not exceed on this host, and run-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLimits {
    /// Largest memory limit a handler may ask for.
    pub max_memory: u64,
    /// Largest process limit.
    pub max_pids: i64,
    /// Most CPUs.
    pub max_cpus: f64,
    /// Largest `/tmp`.
    pub max_tmpfs: u64,
    /// Longest timeout.
    pub max_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a handler is stopped.
    pub grace: Duration,
    /// Output kept per request; the rest is cut with a marker.
    pub output_cap: u64,
    /// Handlers may use `network: host`.
    pub allow_network_host: bool,
    /// Handlers may run as uid 0.
    pub allow_root: bool,
    /// Handlers may have a writable root filesystem.
    pub allow_writable_root: bool,
    /// OCI runtimes handlers may name (`runtime: runsc`) beside the engine's default; each
    /// must be registered with the engine, which is checked when the runner starts.
    pub runtimes: Vec<String>,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            max_memory: 4 << 30,
            max_pids: 4096,
            max_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            max_tmpfs: 1 << 30,
            max_timeout: Duration::from_secs(6 * 3600),
            grace: Duration::from_secs(10),
            output_cap: 8 << 20,
            allow_network_host: false,
            allow_root: false,
            allow_writable_root: false,
            runtimes: Vec::new(),
        }
    }
}

/// The whole host config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostConfig {
    /// Runner name (default: the host name).
    pub name: Option<String>,
    /// State directory (journal, locks, run logs).
    pub state_dir: Option<PathBuf>,
    /// Work directory (git mirror, checkouts).
    pub work_dir: Option<PathBuf>,
    /// Concurrent requests on different resources.
    pub concurrency: Option<usize>,
    /// Labels this runner carries (requests will select runners by them).
    pub labels: Vec<String>,
    /// On SIGTERM, how long running handlers may go on before they are cancelled.
    pub drain_timeout: Option<Duration>,
    /// Commit author name.
    pub author_name: Option<String>,
    /// Commit author email.
    pub author_email: Option<String>,
    /// Container ceilings.
    pub limits: HostLimits,
    /// The repository the daemon serves.
    pub repository: Option<RepositoryConfig>,
    /// The daemon's webhook server and polling.
    pub server: ServerConfig,
    /// The forge for check runs.
    pub forge: Option<ForgeConfig>,
    /// Secrets handlers may name, and where file secrets are staged.
    pub secrets: HostSecrets,
    /// Where handlers run.
    pub executor: ExecutorConfig,
}

/// `[executor]`: where handlers run.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ExecutorConfig {
    /// The local Docker engine (`DOCKER_HOST` or `/var/run/docker.sock`).
    #[default]
    Docker,
    /// A Kubernetes cluster: a Job per request (`[executor.kubernetes]`).
    Kubernetes(crate::exec::kubernetes::KubernetesConfig),
}

/// `[executor] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ExecutorKind {
    #[default]
    Docker,
    Kubernetes,
}

/// `[repository]`: what `codex-runner run` watches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Git remote URL (or path).
    pub url: String,
    /// Branch to run from (default: the repository's mainline branch).
    pub branch: Option<String>,
}

/// `[server]`: the webhook endpoint and the polling fallback.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8733`).
    pub listen: String,
    /// File holding the webhook secret; without it `/webhook` refuses every delivery.
    pub webhook_secret_file: Option<PathBuf>,
    /// How often the remote's branch is checked even without webhooks (default 60s).
    pub poll_interval: Duration,
    /// The public URL of `/webhook` registered with the forge (for `unregister`).
    pub webhook_url: Option<String>,
    /// Address `/metrics` is served on, apart from the webhook (default `127.0.0.1:8734`;
    /// `off`: not served).
    pub metrics_listen: Option<String>,
    /// Also answer `GET /healthz` (`ok`, nothing more) on the webhook's listener, for a load
    /// balancer in front of it that probes the same port (default: only `/webhook` there).
    pub webhook_healthz: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8733".into(),
            webhook_secret_file: None,
            poll_interval: Duration::from_secs(60),
            webhook_url: None,
            metrics_listen: Some("127.0.0.1:8734".into()),
            webhook_healthz: false,
        }
    }
}

/// `[forge]`: where check runs go, and the credentials (a token file, or a GitHub App).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    /// API base URL (`https://api.github.com`).
    pub api_url: String,
    /// `OWNER/NAME` on the forge.
    pub repository: String,
    /// File holding a personal or fine-grained token.
    pub token_file: Option<PathBuf>,
    /// GitHub App id (with `app_key_file` and `installation_id`, instead of `token_file`).
    pub app_id: Option<u64>,
    /// The App's private key (PEM).
    pub app_key_file: Option<PathBuf>,
    /// The App's installation id on the repository's owner.
    pub installation_id: Option<u64>,
    /// `check-runs` (default) or `statuses`.
    #[serde(default)]
    pub report: Report,
}

impl ForgeConfig {
    /// Token settings, or App settings, complete and not both.
    pub fn check(&self) -> anyhow::Result<()> {
        let app = [
            self.app_id.is_some(),
            self.app_key_file.is_some(),
            self.installation_id.is_some(),
        ];
        match (&self.token_file, app) {
            (Some(_), [false, false, false]) | (None, [true, true, true]) => Ok(()),
            (Some(_), _) => anyhow::bail!(
                "forge: give token_file or the GitHub App (app_id, app_key_file, installation_id), not both"
            ),
            (None, [false, false, false]) => anyhow::bail!(
                "forge: credentials missing: token_file, or app_id, app_key_file and installation_id"
            ),
            (None, _) => anyhow::bail!(
                "forge: a GitHub App needs all of app_id, app_key_file and installation_id"
            ),
        }
    }

    /// Read the credentials these settings name.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        self.check()?;
        if let Some(file) = &self.token_file {
            let token = std::fs::read_to_string(file).with_context(|| {
                format!("failed to read the forge token from {}", file.display())
            })?;
            let token = token.trim();
            anyhow::ensure!(
                !token.is_empty(),
                "the forge token file {} is empty",
                file.display()
            );
            return Ok(Credentials::Token(token.to_string()));
        }
        let (Some(app_id), Some(key_file), Some(installation_id)) =
            (self.app_id, &self.app_key_file, self.installation_id)
        else {
            anyhow::bail!("forge: incomplete GitHub App settings");
        };
        let key_pem = std::fs::read(key_file).with_context(|| {
            format!(
                "failed to read the GitHub App key from {}",
                key_file.display()
            )
        })?;
        Ok(Credentials::App {
            app_id,
            key_pem,
            installation_id,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    runner: RunnerFile,
    repository: Option<RepositoryConfig>,
    #[serde(default)]
    server: ServerFile,
    forge: Option<ForgeConfig>,
    #[serde(default)]
    git: GitFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, SourceFile>,
    #[serde(default)]
    executor: ExecutorFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutorFile {
    /// `docker` (the default) or `kubernetes`.
    kind: Option<ExecutorKind>,
    /// The cluster, namespace and pod settings of the Kubernetes executor.
    kubernetes: Option<crate::exec::kubernetes::KubernetesFile>,
}

impl ExecutorFile {
    fn check(self) -> anyhow::Result<ExecutorConfig> {
        match (self.kind.unwrap_or_default(), self.kubernetes) {
            (ExecutorKind::Docker, None) => Ok(ExecutorConfig::Docker),
            (ExecutorKind::Docker, Some(_)) => anyhow::bail!(
                "executor.kubernetes is set but executor.kind is `docker`: set kind = \"kubernetes\" or remove [executor.kubernetes]"
            ),
            (ExecutorKind::Kubernetes, k) => Ok(ExecutorConfig::Kubernetes(
                k.unwrap_or_default()
                    .check()
                    .context("executor.kubernetes")?,
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerFile {
    /// Runner name, recorded in every status file.
    name: Option<String>,
    /// State directory.
    state_dir: Option<PathBuf>,
    /// Work directory.
    work_dir: Option<PathBuf>,
    /// Concurrency.
    concurrency: Option<usize>,
    /// Labels.
    #[serde(default)]
    labels: Vec<String>,
    /// Drain timeout.
    drain_timeout: Option<String>,
    /// Where file secrets are staged (a tmpfs).
    secrets_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    /// Listen address.
    listen: Option<String>,
    /// Metrics listen address, or `off`.
    metrics_listen: Option<String>,
    /// `/healthz` on the webhook's listener too.
    webhook_healthz: Option<bool>,
    /// Webhook secret file.
    webhook_secret_file: Option<PathBuf>,
    /// Poll interval.
    poll_interval: Option<String>,
    /// Registered webhook URL.
    webhook_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GitFile {
    /// Author and committer name of the runner's commits.
    author_name: Option<String>,
    /// Author and committer email.
    author_email: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_memory: Option<String>,
    max_pids: Option<i64>,
    max_cpus: Option<f64>,
    max_tmpfs: Option<String>,
    max_timeout: Option<String>,
    grace: Option<String>,
    output_cap: Option<String>,
    allow_network_host: Option<bool>,
    allow_root: Option<bool>,
    allow_writable_root: Option<bool>,
    runtimes: Option<Vec<String>>,
}

impl HostConfig {
    /// Read and check the TOML file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read host config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("failed to load host config {}", path.display()))
    }

    /// Parse TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let f: File = toml::from_str(text).context("invalid TOML")?;
        let d = HostLimits::default();
        let size = |key: &str, v: Option<String>, default: u64| -> anyhow::Result<u64> {
            v.map_or(Ok(default), |s| parse_size(&s).map_err(anyhow::Error::msg))
                .with_context(|| format!("limits.{key}"))
        };
        let dur = |key: &str, v: Option<String>, default: Duration| -> anyhow::Result<Duration> {
            v.map_or(Ok(default), |s| {
                parse_duration(&s).map_err(anyhow::Error::msg)
            })
            .with_context(|| format!("limits.{key}"))
        };
        let l = f.limits;
        let sd = ServerConfig::default();
        let server = ServerConfig {
            listen: f.server.listen.unwrap_or(sd.listen),
            webhook_healthz: f.server.webhook_healthz.unwrap_or(sd.webhook_healthz),
            metrics_listen: match f.server.metrics_listen {
                Some(off) if off == "off" => None,
                Some(addr) => Some(addr),
                None => sd.metrics_listen,
            },
            webhook_secret_file: f.server.webhook_secret_file,
            webhook_url: f.server.webhook_url,
            poll_interval: f
                .server
                .poll_interval
                .map_or(Ok(sd.poll_interval), |s| {
                    parse_duration(&s).map_err(anyhow::Error::msg)
                })
                .context("server.poll_interval")?,
        };
        if let Some(forge) = &f.forge {
            forge.check()?;
        }
        let mut sources = std::collections::BTreeMap::new();
        for (name, source) in f.secrets {
            let source = source.check(&name)?;
            sources.insert(name, source);
        }
        let secrets = HostSecrets::new(
            sources,
            f.runner
                .secrets_dir
                .unwrap_or_else(|| crate::secrets::DEFAULT_DIR.into()),
        );
        Ok(HostConfig {
            repository: f.repository,
            server,
            forge: f.forge,
            name: f.runner.name,
            state_dir: f.runner.state_dir,
            work_dir: f.runner.work_dir,
            concurrency: f.runner.concurrency,
            labels: f.runner.labels,
            drain_timeout: f
                .runner
                .drain_timeout
                .map(|s| parse_duration(&s).map_err(anyhow::Error::msg))
                .transpose()
                .context("runner.drain_timeout")?,
            secrets,
            executor: f.executor.check()?,
            author_name: f.git.author_name,
            author_email: f.git.author_email,
            limits: HostLimits {
                max_memory: size("max_memory", l.max_memory, d.max_memory)?,
                max_pids: l.max_pids.unwrap_or(d.max_pids),
                max_cpus: l.max_cpus.unwrap_or(d.max_cpus),
                max_tmpfs: size("max_tmpfs", l.max_tmpfs, d.max_tmpfs)?,
                max_timeout: dur("max_timeout", l.max_timeout, d.max_timeout)?,
                grace: dur("grace", l.grace, d.grace)?,
                output_cap: size("output_cap", l.output_cap, d.output_cap)?,
                allow_network_host: l.allow_network_host.unwrap_or(d.allow_network_host),
                allow_root: l.allow_root.unwrap_or(d.allow_root),
                allow_writable_root: l.allow_writable_root.unwrap_or(d.allow_writable_root),
                runtimes: l.runtimes.unwrap_or(d.runtimes),
            },
        })
    }
}

/// The host name, for the default runner name and for claims.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "codex-runner".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c = HostConfig::parse(
            "[runner]\nname = \"h1\"\n[limits]\noutput_cap = \"1MiB\"\nallow_network_host = true\n",
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("h1"));
        assert_eq!(c.limits.output_cap, 1 << 20);
        assert!(c.limits.allow_network_host);
        assert!(c.limits.runtimes.is_empty());
        let c = HostConfig::parse("[limits]\nruntimes = [\"runsc\"]\n").unwrap();
        assert_eq!(c.limits.runtimes, ["runsc"]);
        assert!(HostConfig::parse("[runner]\nnmae = \"x\"\n").is_err());
        let err = HostConfig::parse("[limits]\ngrace = \"soon\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("limits.grace"), "{err:#}");
        let c = HostConfig::parse(
            "[runner]\nsecrets_dir = \"/run/x\"\n[secrets]\nTOKEN = { value = \"abcdef\" }\nKEY = { file = \"/etc/k\" }\n",
        )
        .unwrap();
        assert_eq!(c.secrets.dir(), Path::new("/run/x"));
        assert_eq!(c.secrets.value("TOKEN").unwrap(), "abcdef");
        let err = HostConfig::parse("[secrets]\nT = { value = \"a\", env = \"B\" }\n").unwrap_err();
        assert!(format!("{err:#}").contains("secrets.T"), "{err:#}");
        assert!(HostConfig::parse("[secrets]\nT = { path = \"/x\" }\n").is_err());
    }

    #[test]
    fn the_executor_is_docker_unless_the_config_names_another() {
        assert_eq!(
            HostConfig::parse("").unwrap().executor,
            ExecutorConfig::Docker
        );
        let c = HostConfig::parse("[executor]\nkind = \"docker\"\n").unwrap();
        assert_eq!(c.executor, ExecutorConfig::Docker);
        let err = HostConfig::parse("[executor]\nkind = \"nomad\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("kubernetes") && text.contains("docker"),
            "{text}"
        );
        assert!(HostConfig::parse("[executor]\nkinds = \"docker\"\n").is_err());
        let c = HostConfig::parse("[executor]\nkind = \"kubernetes\"\n").unwrap();
        let ExecutorConfig::Kubernetes(k) = c.executor else {
            panic!("not kubernetes: {:?}", c.executor)
        };
        assert_eq!(k.namespace, None);
        let err = HostConfig::parse("[executor.kubernetes]\nnamespace = \"ops\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("executor.kind is `docker`"),
            "{err:#}"
        );
    }
}
