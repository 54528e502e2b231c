//! The integration tests: one binary, so the shared fixtures in `common` compile once.
//!
//! Each module is a concern; see docs/reliability.md for the guarantee each one pins.

mod common;

mod abuse;
pub mod action;
mod cli;
mod crash;
mod daemon;
mod dispatch;
mod engine_lost;
mod fleet;
mod fleet_stress;
mod forge_checks;
mod forge_dispatch;
mod fuzz_seeds;
mod git_flow;
mod hostile;
mod install;
mod kubernetes;
mod layout;
mod messages;
mod register;
mod rejections;
mod remotes;
mod schemas;
mod secrets;
mod shallow;
mod shutdown;
