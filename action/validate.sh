#!/usr/bin/env bash
# The action's check: the requests the pull request adds or changes, against the base branch's
# handlers and codex.repo.yaml, as the runner's own check. Annotations and the step summary
# come from `--format github`; the outputs from GITHUB_OUTPUT; the exit status fails the job.
set -uo pipefail
repo="$GITHUB_WORKSPACE/${CODEX_PATH:-.}"
args=(validate --repo "$repo")
if [ -n "${CODEX_BASE:-}" ]; then
  args+=(--base "$CODEX_BASE" --head "${CODEX_HEAD:-HEAD}")
elif [ -n "${GITHUB_EVENT_PATH:-}" ] && [ -f "$GITHUB_EVENT_PATH" ]; then
  args+=(--event "$GITHUB_EVENT_PATH")
fi
# Both sides' history down to where they meet: a shallow checkout is deepened.
if [ "$(git -C "$repo" rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
  git -C "$repo" fetch --quiet --no-tags --unshallow origin || echo "::warning title=codex-runner::could not deepen the shallow checkout; use actions/checkout with fetch-depth: 0"
fi

report="$RUNNER_TEMP/codex-runner/report.json"
mkdir -p "$(dirname "$report")"
codex-runner "${args[@]}" --format json >"$report"
json_rc=$?
if [ "$json_rc" -ge 2 ]; then
  message=$(codex-runner "${args[@]}" --format text 2>&1 >/dev/null | tail -1)
  echo "::error title=codex-runner::could not validate: ${message:-exit status $json_rc}"
  exit "$json_rc"
fi
echo "report=$report" >>"$GITHUB_OUTPUT"
if [ -n "${CODEX_SARIF_FILE:-}" ]; then
  codex-runner "${args[@]}" --format sarif >"$CODEX_SARIF_FILE"
fi
codex-runner "${args[@]}" --format github
rc=$?
if [ "$rc" -eq 1 ] && [ "${CODEX_FAIL:-true}" != true ]; then
  echo "::warning title=codex-runner::some requests would be rejected (fail-on-rejection is off)"
  exit 0
fi
exit "$rc"
