//! codex-runner's entry point: parse the command line, set up tracing, run, exit.

fn main() {
    std::process::exit(codex_runner::cli::main());
}
