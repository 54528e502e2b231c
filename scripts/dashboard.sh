#!/usr/bin/env bash
# The picture of the dashboard in README: run the benchmark's daemon part with its /metrics
# scraped every half second, then draw the dashboard's main panels from that real data.
#
#   scripts/dashboard.sh            writes docs/grafana/codex-runner.png
#
# The dashboard itself (docs/grafana/codex-runner.json) is imported into Grafana as is.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib
scrape=$(mktemp)
trap 'rm -f "$scrape"' EXIT
BENCH_SCRAPE=$scrape BENCH_HISTORY=0 BENCH_LAYOUTS=sharded BENCH_DAEMON=1 bash scripts/bench.sh
python3 docs/grafana/render.py "$scrape" docs/grafana/codex-runner.png
