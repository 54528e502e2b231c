//! `codex-runner completions SHELL` and `codex-runner man --dir D`: shell completions and
//! manual pages, made from the command line's own definition so they never drift from it.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::exit;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Where to write `codex-runner.1` and a page per command (`codex-runner-run.1`, …).
    #[arg(long, env = "CODEX_RUNNER_DIR")]
    pub dir: PathBuf,
}

/// Print the completion script for `a.shell` on stdout.
pub fn completions(a: CompletionsArgs) -> i32 {
    let mut cmd = super::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "codex-runner", &mut std::io::stdout());
    exit::OK
}

/// Write the manual pages into `a.dir`.
pub fn man(a: ManArgs) -> i32 {
    let written = std::fs::create_dir_all(&a.dir)
        .and_then(|()| clap_mangen::generate_to(super::Cli::command(), &a.dir));
    match written {
        Ok(()) => {
            println!("wrote the manual pages to {}", a.dir.display());
            exit::OK
        }
        Err(e) => {
            eprintln!(
                "error: failed to write the manual pages to {}: {e}",
                a.dir.display()
            );
            exit::FAILED
        }
    }
}
