#!/usr/bin/env bash
# The benchmark runner: every suite of `compare` in one run, then the report.
#   rdma     ib_write_bw / ib_read_bw next to handoff over RDMA (server-initiated, 2 NICs,
#            direct), 4 KiB, 64 KiB, 1 MiB, 16 MiB requests, reads and writes
#   clients  1, 4, 16, 64 concurrent clients over RDMA and TCP
#   mount    fio bs=1M O_DIRECT at QD1 and QD8 on `handoff mount` over RDMA next to the kernel's
#            NFSv4.1 over RDMA and perftest, three interleaved trials
#            (all three in ONE rxe guest boot: QEMU TCG, 2 vCPUs, rxe0 and rxe1 on two virtio NICs)
#   stream   handoff over TCP and TLS next to nginx (sendfile / TLS / WebDAV PUT) + curl
#   many     256 and 1000 clients starting at once over TCP: open p50/p99, MiB/s, CPU, RSS
#   opens    opens/s and resumes/s with 10^3, 10^4, 10^5 durable opens held; RSS, store size
#            (these on the host: emulated CPUs would bury the comparison in curl's start-up)
# It then generates bench/results/results.{json,md}, throughput.png and the README section.
# Installs what it needs. About 20 minutes on a 2-core machine.
#   bench/run.sh            the full run; rewrites bench/results/ and the README section
#   bench/run.sh --smoke    one size, one tool each, report into target/ (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "bench/run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

hw-setup/install-deps.sh --rdma --bench
echo "== building (release)"
cargo build --release --locked -p handoff -p handoff-server -p handoff-bench
out=$PWD/target/bench-results
rm -rf "$out"; mkdir -p "$out"
common=(--work /tmp/handoff-bench)
((smoke)) && common+=(--smoke)
echo "== rdma, clients and mount suites in one rxe guest boot"
started=$SECONDS
hw-setup/rxe-guest.sh --nics 2 --mem 3072 --timeout 2700 -- \
  target/release/compare --suites rdma,clients,mount "${common[@]}" --out "$out/guest.json"
echo "== stream, many and opens suites on this host"
target/release/compare --suites stream,many,opens "${common[@]}" --out "$out/host.json"
echo "== suites took $((SECONDS - started)) s"
inputs=(--in "$out/guest.json" --in "$out/host.json")
if ((smoke)); then
  # Everything the full run does, into target/: the report, the plot, a README copy spliced.
  cp README.md "$out/README.md"
  target/release/report "${inputs[@]}" --out-dir "$out/report" --readme "$out/README.md" >/dev/null
  test -s "$out/report/throughput.png" && grep -q "ib_write_bw" "$out/README.md"
  rows=$(python3 -c 'import json,sys; print(sum(len(r["rows"]) for r in json.load(open(sys.argv[1]))))' "$out/report/results.json")
  echo "bench smoke: $rows rows; report, plot and README section made"
else
  target/release/report "${inputs[@]}"
fi
