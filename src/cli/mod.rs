//! The command line: one file per subcommand. Each returns the process exit code.
//!
//! Exit codes: 0 done; 1 some input invalid (`validate`, `selftest`) or an unexpected error;
//! 2 usage or a refused run; 3 repository contract broken; 4 git remote failed; 5 Docker failed.

pub mod dispatch;
mod docs;
mod handlers;
mod install;
mod ledger;
pub(crate) mod paths;
pub mod register;
pub mod run;
mod selftest;
mod status;
mod template;
mod validate;
mod validate_out;
mod verify;

use crate::exit;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "codex-runner",
    version,
    about = "Runs requests merged to main in hardened containers and records the results on main."
)]
pub struct Cli {
    /// Log filter (e.g. `info`, `codex_runner=debug`) [default: CODEX_LOG, else RUST_LOG,
    /// else info].
    #[arg(long, global = true, env = "CODEX_RUNNER_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line, for
    /// journald or a log shipper).
    #[arg(
        long,
        global = true,
        env = "CODEX_RUNNER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The files `codex-runner schema` describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemaOf {
    /// A request file under the inbox.
    Request,
    /// handlers/index.yml.
    Index,
    /// codex.repo.yaml.
    Repo,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a JSON Schema (draft 2020-12) for editors and other validators.
    Schema {
        /// Which file it describes: a request, handlers/index.yml, or codex.repo.yaml.
        #[arg(value_enum, default_value = "request")]
        of: SchemaOf,
    },
    /// Inspect the handler index.
    Handlers {
        #[command(subcommand)]
        command: handlers::HandlersCommand,
    },
    /// Validate request files in a working tree, without running anything.
    Validate(validate::ValidateArgs),
    /// Run one pass: run every new request on the branch and push the results.
    Dispatch(Box<dispatch::DispatchArgs>),
    /// Register this runner with a repository on the forge and write its config.
    Register(Box<register::RegisterArgs>),
    /// Delete the runner's webhook and its config.
    Unregister(register::UnregisterArgs),
    /// Run as a daemon: webhooks and polling trigger passes.
    Run(run::RunArgs),
    /// Install the daemon as a hardened systemd service (as root, after `register`).
    Install(install::InstallArgs),
    /// Stop and remove the systemd service `install` wrote.
    Uninstall(install::UninstallArgs),
    /// What the runner on this host is doing: the daemon's answer and what waits in the state
    /// directory.
    Status(status::StatusArgs),
    /// Check a registered runner end to end without running a request: config and file modes,
    /// the remote (fetch, a push), the forge, the webhook, secrets, Docker and its images, the
    /// listeners.
    Verify(verify::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Write the manual pages.
    Man(docs::ManArgs),
    /// Check Docker, git, the state directory and the config.
    Selftest(selftest::SelftestArgs),
    /// Run the whole loop end to end on a local repository with example requests.
    /// Print a request's status and log from the branch, whatever the layout.
    Logs(ledger::LogsArgs),
    /// Move a repository's results to the sharded (or the flat) layout, in one commit.
    MigrateLayout(ledger::MigrateArgs),
}

/// Options shared by commands that read a repository working tree.
#[derive(Debug, clap::Args)]
pub struct RepoDirArg {
    /// Repository working tree.
    #[arg(long = "repo", env = "CODEX_RUNNER_REPO", default_value = ".")]
    pub repo: PathBuf,
}

/// Parse arguments, set up tracing and run; the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    if let Err(e) = init_logging(cli.log.as_deref(), cli.log_format) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Schema { of } => {
                let text = match of {
                    SchemaOf::Request => crate::contract::request::SCHEMA,
                    SchemaOf::Index => crate::contract::handlers::INDEX_SCHEMA,
                    SchemaOf::Repo => crate::contract::repo_config::SCHEMA,
                };
                println!("{}", text.trim_end());
                exit::OK
            }
            Command::Handlers { command } => handlers::run(command),
            Command::Validate(a) => validate::run(a),
            Command::Dispatch(a) => dispatch::run(*a).await,
            Command::Run(a) => run::run(a).await,
            Command::Register(a) => register::register(*a).await,
            Command::Unregister(a) => register::unregister(a).await,
            Command::Selftest(a) => selftest::run(a).await,
            Command::Install(a) => install::install(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Verify(a) => verify::run(a).await,
            Command::Completions(a) => docs::completions(a),
            Command::Man(a) => docs::man(a),
            Command::Uninstall(a) => install::uninstall(a).await,
            Command::Logs(a) => tokio::task::block_in_place(|| ledger::logs(a)),
            Command::MigrateLayout(a) => tokio::task::block_in_place(|| ledger::migrate(a)),
        }
    })
}

/// How `status` and `verify` print what they found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// A line each, for a person.
    Text,
    /// One JSON object, for a script.
    Json,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log filter: `--log` (or `CODEX_RUNNER_LOG`), else `CODEX_LOG`, else `RUST_LOG`, else
/// `info`. A filter given explicitly that does not parse is an error, not a silent default.
fn log_filter(flag: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let (text, from) = match (flag, env("CODEX_LOG"), env("RUST_LOG")) {
        (Some(f), _, _) => (f.to_string(), "--log"),
        (None, Some(c), _) => (c, "CODEX_LOG"),
        (None, None, Some(r)) => (r, "RUST_LOG"),
        // kube's client logs each failed request itself; the runner says what failed, once.
        (None, None, None) => ("info,kube_client=off".to_string(), "the default"),
    };
    tracing_subscriber::EnvFilter::try_new(&text).map_err(|e| {
        format!("{from} `{text}` is not a log filter (e.g. info, codex_runner=debug): {e}")
    })
}

/// Whether `NO_COLOR` asks for no colour (set and not empty, as no-color.org says).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Log to stderr (secrets masked) in `format`, filtered as [`log_filter`] says.
fn init_logging(flag: Option<&str>, format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = log_filter(flag)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::secrets::MaskedStderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && !no_color())
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Print an error chain the way every command does.
pub fn report_error(e: &anyhow::Error) {
    eprintln!("error: {}", crate::secrets::mask(&format!("{e:#}")));
}
