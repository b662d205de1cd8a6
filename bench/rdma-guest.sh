#!/usr/bin/env bash
# Runs INSIDE the rxe guest (bench/run-rdma.sh starts it): perftest and handoff on the same
# rxe0 device in the same boot, for reads and writes at 1 MiB and 64 MiB, plus server CPU
# for server-initiated vs direct-mode reads. Writes target/bench-results/rdma.json.
set -uo pipefail
cd "$(dirname "$0")/.."
B=target/release
OUT=target/bench-results; mkdir -p "$OUT"
W=/tmp/bench; rm -rf $W; mkdir -p $W/root $W/state
IP=${HANDOFF_GUEST_IPS%%,*}
DEV=${HANDOFF_RXE_DEVICES%%,*}

perftest() { # tool size iterations -> MiB/s (perftest's "MB/sec" is MiB/s)
  local tool=$1 size=$2 n=$3
  timeout 120 $tool -d $DEV -s $size -n $n -F >/dev/null 2>&1 &
  sleep 1
  timeout 120 $tool -d $DEV -s $size -n $n -F $IP 2>/dev/null | awk -v s=$size '$1==s {print $4}'
  wait
}

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 100 }'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; } # utime+stime ticks
guest_cpu() { awk '/^cpu / {print $2+$3+$4+$6+$7+$8}' /proc/stat; }

$B/handoff keygen bench > $W/bench.id; cp $W/bench.id $W/clients
dd if=/dev/urandom of=$W/root/file bs=1M count=256 status=none
$B/handoffd --root $W/root --state $W/state --clients $W/clients --listen 127.0.0.1:7100 \
  --rdma-listen $IP:7471 > $W/d.out 2> $W/d.err &
SRV=$!
for _ in $(seq 100); do grep -q listening $W/d.out && break; sleep 0.2; done
H="$B/handoff --server 127.0.0.1:7100 --identity $W/bench.id"
RW=$($H open file --mode rw)
results=()
for size in 1048576 67108864; do
  total=$((256 << 20)); iters=$((total / size)); ((iters < 5)) && iters=5  # perftest needs >= 5
  for op in write read; do
    tool=ib_${op}_bw
    peer=$(perftest $tool $size $iters)
    key=$RW
    c0=$(cpu $SRV); g0=$(guest_cpu)
    mine=$($B/rdma_bench --server 127.0.0.1:7100 --identity $W/bench.id --key $key --op $op --block $size --total $total)
    c1=$(cpu $SRV); g1=$(guest_cpu)
    rate=$(echo "$mine" | sed 's/.*"mib_per_s":\([0-9.e+-]*\).*/\1/')
    results+=("{\"op\":\"$op\",\"size\":$size,\"perftest\":\"$tool\",\"perftest_mib_s\":${peer:-0},\"handoff_mib_s\":$rate,\"server_cpu_s\":$(secs $c0 $c1),\"guest_cpu_s\":$(secs $g0 $g1)}")
    echo "size=$size op=$op perftest=$peer handoff=$rate"
  done
done
# Direct mode: a lone read-only open, one-sided reads; server CPU next to server-initiated.
$H close "$RW"
RO=$($H open file --mode r)
for op in read direct; do
  c0=$(cpu $SRV); g0=$(guest_cpu)
  mine=$($B/rdma_bench --server 127.0.0.1:7100 --identity $W/bench.id --key $RO --op $op --block 67108864 --total $((256 << 20)))
  c1=$(cpu $SRV); g1=$(guest_cpu)
  rate=$(echo "$mine" | sed 's/.*"mib_per_s":\([0-9.e+-]*\).*/\1/')
  results+=("{\"op\":\"$op-cpu\",\"size\":67108864,\"handoff_mib_s\":$rate,\"server_cpu_s\":$(secs $c0 $c1),\"guest_cpu_s\":$(secs $g0 $g1)}")
  echo "cpu op=$op handoff=$rate server_cpu=$(secs $c0 $c1)"
done
kill $SRV
(IFS=,; echo "[${results[*]}]") > $OUT/rdma.json
cat $OUT/rdma.json
