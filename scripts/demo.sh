#!/usr/bin/env bash
# The whole loop on a fresh machine: Docker up, example images built from Debian packages,
# then the demo (crates/demo: a local repository, a merged PR of requests, one pass, a summary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/docker-up.sh
bash containers/build-images.sh
cargo run --quiet --release -p codex-runner-demo -- "$@"
