#!/usr/bin/env bash
# Runs the RDMA end-to-end tests (tests/rdma.rs) inside the QEMU guest with real soft-RoCE:
# two NICs, rxe0 and rxe1. Builds the test binary (release: the guest is emulated) on the
# host; the guest sees it through the shared target/ directory. Installs what it needs.
#   hw-setup/test-rdma.sh [TEST-NAME-FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
hw-setup/install-deps.sh --rdma
echo "== building the RDMA tests (release)"
cargo build --release --locked -p handoff-server --bin handoffd
bin=$(cargo test --release --locked --test rdma --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["name"] == "rdma":
        print(j["executable"])' | tail -n 1)
[[ -n "$bin" ]] || { echo "test-rdma: could not find the test binary" >&2; exit 1; }
echo "== running them in the rxe guest"
HANDOFF_REQUIRE_RDMA=1 hw-setup/rxe-guest.sh --nics 2 --timeout 1800 -- "$bin" --include-ignored --test-threads=1 "$@"
