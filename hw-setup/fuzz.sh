#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails if any of them crashes.
#
#   FUZZ_SECONDS=30        seconds of fuzzing per target (libFuzzer -max_total_time)
#   FUZZ_SANITIZER=address address | none; unset: address, falling back to none if the
#                          address-sanitized build fails
#   FUZZ_TARGETS="a b"     subset of targets (default: all, from `cargo fuzz list`)
#
# Only the stable toolchain is installed; cargo-fuzz passes nightly-only `-Z` flags
# (-Zsanitizer=address, ...), which stable rustc accepts with RUSTC_BOOTSTRAP=1.
# Crash inputs land in fuzz/artifacts/<target>/, logs in fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
if ! [[ "$FUZZ_SECONDS" =~ ^[0-9]+$ ]] || [ "$FUZZ_SECONDS" -eq 0 ]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a positive integer, got '$FUZZ_SECONDS'" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_SANITIZER:-}" ]; then
    SANITIZER="$FUZZ_SANITIZER"
    cargo fuzz build --sanitizer "$SANITIZER"
elif cargo fuzz build --sanitizer address; then
    SANITIZER=address
else
    echo "fuzz.sh: address-sanitized build failed; retrying with --sanitizer none" >&2
    SANITIZER=none
    cargo fuzz build --sanitizer "$SANITIZER"
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a TARGETS <<<"$FUZZ_TARGETS"
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi
if [ "${#TARGETS[@]}" -eq 0 ]; then
    echo "fuzz.sh: no fuzz targets found" >&2
    exit 2
fi

LOGS="$ROOT/fuzz/target/fuzz-logs"
mkdir -p "$LOGS"
passed=0
failed=0
summary=()

for t in "${TARGETS[@]}"; do
    log="$LOGS/$t.log"
    # New inputs go to corpus/<t> (first dir); the checked-in seeds/<t> is only read.
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    echo "fuzz.sh: $t for ${FUZZ_SECONDS}s (sanitizer $SANITIZER)"
    start=$SECONDS
    status=0
    cargo fuzz run --sanitizer "$SANITIZER" "$t" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - start))

    # Executions: the final stats if libFuzzer got that far, else its last "#N" status line.
    runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
    if [ -z "$runs" ]; then
        runs="$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
    fi
    runs="${runs:-?}"

    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        line="$(printf '%-12s runs=%-11s %4ss  ok' "$t" "$runs" "$elapsed")"
    else
        failed=$((failed + 1))
        line="$(printf '%-12s runs=%-11s %4ss  FAILED (exit %s, log %s)' "$t" "$runs" "$elapsed" "$status" "$log")"
        echo "---- $t: last lines of $log" >&2
        grep -E -A1 "panicked at" "$log" >&2 || true
        grep -E "ERROR: |SUMMARY: |Test unit written to|^Base64: " "$log" >&2 || tail -n 30 "$log" >&2
    fi
    summary+=("$line")
done

echo
echo "fuzz summary (sanitizer $SANITIZER, ${FUZZ_SECONDS}s per target):"
printf '  %s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
