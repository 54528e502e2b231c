//! The process's exit codes, in one place: README's "Exit codes" table. Every command returns
//! one of these; scripts and systemd (`RestartPreventExitStatus=`) rely on them.

/// Done: the pass completed (handler failures are results, not errors); `validate`: all
/// valid; `selftest`: all checks passed.
pub const OK: i32 = 0;
/// `validate`: some file invalid; `selftest`: some check failed; `logs`: no such request;
/// otherwise an unexpected error (state directory, I/O).
pub const FAILED: i32 = 1;
/// Usage error, unreadable host config, or a refused run (e.g. an unmerged branch under
/// `enforce_merge_before_execution`): running again changes nothing.
pub const USAGE: i32 = 2;
/// The repository contract is broken (`codex.repo.yaml` or `handlers/index.yml`): nothing
/// ran, nothing moved.
pub const CONTRACT: i32 = 3;
/// The git remote failed (fetch, or push after retries); unpushed results stay in the state
/// directory.
pub const GIT: i32 = 4;
/// The executor (the Docker engine) failed; unfinished requests run again in a later pass.
pub const EXECUTOR: i32 = 5;
