//! `codex-runner handlers list`: what each kind runs, where, with which limits.

use crate::contract::handlers::{HandlerIndex, ImageSource, INDEX_PATH};
use crate::contract::units::format_duration;
use crate::exit;

use super::RepoDirArg;

/// `handlers` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HandlersCommand {
    /// List the handlers of `handlers/index.yml`.
    List(RepoDirArg),
}

/// Run a `handlers` subcommand.
pub fn run(cmd: HandlersCommand) -> i32 {
    let HandlersCommand::List(args) = cmd;
    let path = args.repo.join(INDEX_PATH);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: failed to read {}: {e}", path.display());
            return exit::FAILED;
        }
    };
    let index = match HandlerIndex::parse(&bytes) {
        Ok(i) => i,
        Err(v) => {
            eprintln!("{v}");
            return exit::FAILED;
        }
    };
    println!(
        "{:<12} {:<32} {:<8} {:<8} {:<24} DESCRIPTION",
        "KIND", "IMAGE", "TIMEOUT", "NETWORK", "RESOURCE"
    );
    for h in index.handlers.values() {
        let image = match &h.image {
            ImageSource::Reference(r) => r.clone(),
            ImageSource::Build(d) => format!("build: containers/{d}"),
        };
        println!(
            "{:<12} {:<32} {:<8} {:<8} {:<24} {}",
            h.kind,
            image,
            format_duration(h.timeout),
            h.network.as_str(),
            h.resource_text,
            h.description
        );
    }
    exit::OK
}
