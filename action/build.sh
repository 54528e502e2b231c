#!/usr/bin/env bash
# Build codex-runner from the source this action lives in (cargo install, into a directory
# the step before restores from the cache), and put it on the PATH.
set -euo pipefail
root="$RUNNER_TEMP/codex-runner-cargo"
if [ ! -x "$root/bin/codex-runner" ]; then
  command -v cargo >/dev/null || { echo "::error title=codex-runner::no cargo on this runner to build codex-runner with; set the binary or download-url input"; exit 1; }
  cargo install --locked --quiet --path "$GITHUB_ACTION_PATH/.." --root "$root"
fi
"$root/bin/codex-runner" --version
echo "$root/bin" >>"$GITHUB_PATH"
