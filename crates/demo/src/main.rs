//! `codex-runner-demo`: the whole loop on this machine, with nothing but Docker — the local
//! forge, a registered runner as a daemon, pull requests, a merge, the results on main. Kept
//! out of the product (its forge is a test forge); `scripts/demo.sh` runs it.

mod demo;
mod forge;
mod template;

use clap::Parser;

/// Command line of the demo.
#[derive(Debug, Parser)]
#[command(
    name = "codex-runner-demo",
    version,
    about = "codex-runner end to end on a local forge"
)]
struct Cli {
    #[command(flatten)]
    args: demo::DemoArgs,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CODEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(demo::run(cli.args)),
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            codex_runner::exit::FAILED
        }
    };
    std::process::exit(code);
}
