#!/usr/bin/env bash
# A narrated walk-through of handoff with several servers: an active/passive pair over a real
# etcd (kill -9 of the active, failover, fencing of a paused active), then a planned drain of
# one server into another. Builds what it needs; leaves nothing running. About a minute after
# the build.
set -euo pipefail
cd "$(dirname "$0")/.."
hw-setup/install-deps.sh >/dev/null
echo "== building (release)"
cargo build --release --locked -q -p handoff -p handoff-server --bins
BIN=$PWD/target/release
work=$(mktemp -d /tmp/handoff-cluster-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timed out waiting for $2 in $1" >&2; return 1; }

"$BIN/handoff" keygen alice -o "$work/alice.id"
"$BIN/handoff" keygen bob -o "$work/bob.id"
"$BIN/handoff" keygen admin -o "$work/admin.id"
"$BIN/handoff" keygen srv-a -o "$work/srv-a.id"
(umask 077; cat "$work/alice.id" "$work/bob.id" "$work/admin.id" "$work/srv-a.id" > "$work/clients")
alice() { "$BIN/handoff" --identity "$work/alice.id" "$@"; }
bob() { "$BIN/handoff" --identity "$work/bob.id" "$@"; }
export HANDOFF_KEYS=$work/keys

step "etcd on 127.0.0.1 (the cluster's store)"
ec=$(port) ep=$(port)
etcd --name demo --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
  --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "demo=http://127.0.0.1:$ep" \
  > "$work/etcd.log" 2>&1 &
pids+=($!)
wait_for "$work/etcd.log" "ready to serve client requests"
echo "etcd://127.0.0.1:$ec"

mkdir -p "$work/root"
node() { # NAME PORT: a node of the pair over one root
  "$BIN/handoffd" --root "$work/root" --state "$work/state-$1" --clients "$work/clients" \
    --listen "127.0.0.1:$2" --store "etcd://127.0.0.1:$ec" --cluster demo --node "$1" \
    --durable-timeout 30 --grace 2 > "$work/$1.out" 2> "$work/$1.log" &
  pids+=($!)
}
A=127.0.0.1:$(port) B=127.0.0.1:$(port)
step "two handoffd over one --root and one etcd: a is active, b waits (binds nothing)"
show node a "${A#*:}"; wait_for "$work/a.out" listening; a_pid=${pids[-1]}
show node b "${B#*:}"; b_pid=${pids[-1]}; wait_for "$work/b.log" "passive: waiting"
grep -o 'passive: waiting.*' "$work/b.log" | head -1
export HANDOFF_SERVER=$A,$B

step "alice writes a file and opens it read/write with a lock (the CLI lists both servers)"
head -c $((8 << 20)) /dev/urandom > "$work/payload"
alice put results.dat < "$work/payload"
KEY=$(alice open results.dat --mode rw --lock 0:4096)
echo "resume key: $KEY"

step "kill -9 the active server"
t0=$(date +%s.%N)
{ kill -9 "$a_pid"; wait "$a_pid"; } 2>/dev/null || true
wait_for "$work/b.out" listening
printf 'b is active %.1f s later: %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$(grep -o 'recovered_opens=[0-9]*' "$work/b.log")"

step "the same key reads through b, with the same bytes"
sha256sum < "$work/payload" | cut -c1-16
alice read "$KEY" | sha256sum | cut -c1-16
step "the lock still holds on b (exit 3)"
bob open results.dat --lock 0:10 || echo "exit $?"

step "a comes back as the passive node; pause b (SIGSTOP) past its lease; a takes over"
node a "${A#*:}"; a_pid=${pids[-1]}
kill -STOP "$b_pid"
wait_for "$work/a.out" listening
echo "a is active again"
step "resume b (SIGCONT): it finds its lease gone and stops without writing anything"
kill -CONT "$b_pid"
wait "$b_pid" 2>/dev/null && code=0 || code=$?
echo "b exited with status $code:"; tail -1 "$work/b.log"
alice resume "$KEY"

step "a namespace: a second server c with its own root and store; drain the pair into it"
mkdir -p "$work/root-c"
C=127.0.0.1:$(port)
"$BIN/handoffd" --root "$work/root-c" --state "$work/state-c" --clients "$work/clients" \
  --listen "$C" --peers srv-a > "$work/c.out" 2> "$work/c.log" &
pids+=($!)
wait_for "$work/c.out" listening
kill "$a_pid"; wait "$a_pid" 2>/dev/null || true   # restart a with the drain settings
"$BIN/handoffd" --root "$work/root" --state "$work/state-a" --clients "$work/clients" \
  --listen "$A" --store "etcd://127.0.0.1:$ec" --cluster demo --node a --grace 1 \
  --admins admin --peer-identity "$work/srv-a.id" > "$work/a2.out" 2> "$work/a2.log" &
pids+=($!)
wait_for "$work/a2.out" listening
show "$BIN/handoff" --identity "$work/admin.id" --server "$A" admin drain --to "$C"
step "alice still asks a; she is referred to c and resumes there by the same key"
HANDOFF_SERVER=$A alice resume "$KEY"
HANDOFF_SERVER=$A alice read "$KEY" | sha256sum | cut -c1-16
echo
echo "done: failover in seconds, a paused active fenced, a drain followed by referral."
