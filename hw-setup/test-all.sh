#!/usr/bin/env bash
# Runs every check handoff has: formatting, clippy, unit and end-to-end tests on the host,
# each fuzz target for a bounded time, and the RDMA end-to-end tests inside a QEMU guest with
# real soft-RoCE (rdma_rxe). Installs what it needs first. This is the README's test command
# and what CI (.ci/run) calls.
#   FUZZ_SECONDS=30   seconds per fuzz target (0 skips fuzzing)
#   HANDOFF_SKIP_RDMA=1   skip the guest tests and the benchmark smoke (they need QEMU)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
rm -f target/test-output.txt target/test-rdma-output.txt

hw-setup/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (host)"
# The end-to-end tests run handoffd, which another package (handoff-server) builds.
cargo build --workspace --bins --locked
cargo test --workspace --locked 2>&1 | tee target/test-output.txt

echo "== benchmark smoke (each criterion bench once)"
cargo bench --locked -p handoff-bench --bench core -- --test

if [[ "${FUZZ_SECONDS:-30}" != "0" ]]; then
  echo "== fuzz (${FUZZ_SECONDS:-30}s per target)"
  hw-setup/fuzz.sh
fi

if [[ "${HANDOFF_SKIP_RDMA:-0}" != "1" ]]; then
  echo "== RDMA tests in the rxe guest"
  hw-setup/test-rdma.sh 2>&1 | tee target/test-rdma-output.txt
  echo "== benchmark runner smoke: one size, one tool each, report and plot (bench/run.sh --smoke)"
  bench/run.sh --smoke
fi

count() { grep -hEo "test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed" "$@" 2>/dev/null; }
passed=$(count target/test-output.txt target/test-rdma-output.txt | awk '{s+=$4} END {print s+0}')
failed=$(count target/test-output.txt target/test-rdma-output.txt | awk '{s+=$6} END {print s+0}')
echo "tests: $passed passed, $failed failed"
