//! codex-runner: merged requests run in hardened containers; results are pushed back to main.
pub mod config;
pub mod contract;
pub mod exec;
pub mod plan;
fn main() {}
