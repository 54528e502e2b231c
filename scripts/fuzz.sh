#!/usr/bin/env bash
# Run the cargo-fuzz targets for a bounded time each, from their committed seed corpus.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 60 s; request and webhook)
#
# Seeds: fuzz/corpus/<target>/ (and tests/corpus/requests/ for `request`); they are read, never
# written. New inputs libFuzzer finds go to fuzz/target/corpus/<target>/; a crash is saved in
# fuzz/artifacts/<target>/ and the script exits non-zero. Replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(request webhook)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes -Z flags to rustc; the machine's one toolchain is stable.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    seeds=("fuzz/corpus/$t")
    [ "$t" = request ] && seeds+=(tests/corpus/requests)
    mkdir -p "fuzz/target/corpus/$t"
    echo "fuzzing $t for ${secs}s (seeds: ${seeds[*]})"
    cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/target/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
