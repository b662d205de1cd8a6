#!/usr/bin/env bash
# Runs every check handoff has: formatting, clippy, unit and end-to-end tests, and each fuzz
# target for a bounded time. Installs what it needs first. This is the README's test command
# and what CI (.ci/run) calls.
#   FUZZ_SECONDS=30   seconds per fuzz target (0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

hw-setup/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee target/test-output.txt
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' target/test-output.txt | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')

if [[ "${FUZZ_SECONDS:-30}" != "0" && -x hw-setup/fuzz.sh ]]; then
  echo "== fuzz (${FUZZ_SECONDS:-30}s per target)"
  hw-setup/fuzz.sh
fi

echo "tests: $passed passed, $failed failed"
