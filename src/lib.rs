//! codex-runner: a self-hosted runner for Git-driven operations.
//!
//! Requests merged to the mainline branch are validated against the repository contract,
//! routed to a handler, run in a hardened Docker container, and recorded back on the branch.

pub mod cli;
pub mod commit;
pub mod config;
pub mod contract;
pub mod crashpoint;
pub mod engine;
pub mod exec;
pub mod exit;
pub mod forge;
pub mod fuzzing;
pub mod git;
pub mod metrics;
pub mod plan;
pub mod record;
pub mod secrets;
pub mod server;
pub mod systemd;
