#!/usr/bin/env bash
# The fleet stress test for longer: ROUNDS rounds (default 20) per remote kind (a path,
# git://, smart HTTP), each three one-shot runners racing over 30 requests under CPU load,
# with Docker's event stream counting container starts. Prints each remote's tally; any
# double start, stranded claim or request left unrecorded fails it.
#   scripts/soak.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
bash scripts/docker-up.sh
bash containers/build-images.sh >/dev/null
CODEX_STRESS_ROUNDS="$rounds" cargo test --all-features --test it fleet_stress:: -- --nocapture 2>&1 |
  grep -E 'remote: Tally|^test |panicked|round [0-9]+:|test result'
