#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (docs/fuzzing.md) one after another and
# prints, per target, the executions, executions per second, corpus size and
# findings. Exits non-zero when any target found something.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default $FUZZ_SECONDS, else 60). Each run starts from the
# committed seeds (fuzz/corpus/<target>/) plus what earlier runs found
# (fuzz/work/<target>/, not committed); findings land in
# fuzz/artifacts/<target>/. `make fuzz` runs every target for FUZZ_SECONDS;
# `make test-fuzz` (part of `make test`) runs each for a few seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${1:-${FUZZ_SECONDS:-60}}
shift || true
FUZZ_FLAGS=${FUZZ_FLAGS:--a}

die() { printf 'fuzz: error: %s\n' "$*" >&2; exit 1; }
command -v cargo-fuzz >/dev/null 2>&1 ||
    die "cargo-fuzz not found: run scripts/setup-test-deps.sh (or cargo install cargo-fuzz --locked)"
rustup run nightly rustc --version >/dev/null 2>&1 ||
    die "no nightly toolchain: run scripts/setup-test-deps.sh (or rustup toolchain install nightly --profile minimal)"

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

start=$(date +%s)
# shellcheck disable=SC2086
cargo +nightly fuzz build $FUZZ_FLAGS
printf 'fuzz: built %d targets in %ds\n' "${#targets[@]}" "$(($(date +%s) - start))"

results=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    touch "artifacts/$t/.started"
    printf 'fuzz: %s for %ss\n' "$t" "$seconds"
    # The first corpus directory is where libFuzzer adds what it finds, so
    # the committed seeds stay as they are.
    # shellcheck disable=SC2086
    if cargo +nightly fuzz run $FUZZ_FLAGS "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FOUND
        failed=1
        grep -E -m1 -A3 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" | sed 's/^/    /' || true
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "work/$t" "corpus/$t" -type f | wc -l)
    findings=$(find "artifacts/$t" -type f -newer "artifacts/$t/.started" \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    results+=("$(printf '%-16s %12s %10s %8s %9s  %s' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$findings" "$status")")
done

printf '\n%-16s %12s %10s %8s %9s  %s\n' target execs execs/s corpus findings status
printf '%s\n' "${results[@]}"
printf 'fuzz: %ss per target, %ds in all; findings are in fuzz/artifacts/<target>/\n' \
    "$seconds" "$(($(date +%s) - start))"
exit "$failed"
