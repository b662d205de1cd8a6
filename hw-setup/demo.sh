#!/usr/bin/env bash
# A narrated walk-through of handoff on this machine, with the embedded (redb) store:
# a server, two clients, an open whose channel drops, a denial, a server crash, a resume.
# Builds what it needs; leaves nothing running. Takes about a minute after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
hw-setup/install-deps.sh >/dev/null
echo "== building (release)"
cargo build --release --locked -q -p handoff -p handoff-server --bins
BIN=$PWD/target/release
work=$(mktemp -d /tmp/handoff-demo.XXXXXX)
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/root" "$work/state"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "identities: one line per client, shared with the server"
"$BIN/handoff" keygen alice -o "$work/alice.id"
"$BIN/handoff" keygen bob -o "$work/bob.id"
(umask 077; cat "$work/alice.id" "$work/bob.id" > "$work/clients")
sed 's/:.*/:<secret>/' "$work/clients"

start_server() {
  "$BIN/handoffd" --root "$work/root" --state "$work/state" --clients "$work/clients" \
    --listen "${1:-127.0.0.1:0}" --durable-timeout 8 --grace 2 > "$work/server.out" 2>> "$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/.*control=\([^ ]*\).*/\1/p' "$work/server.out")
}
step "start handoffd (durable timeout 8 s)"
start_server
echo "control channel on $addr; state in $work/state"
export HANDOFF_SERVER=$addr HANDOFF_KEYS=$work/keys
alice() { "$BIN/handoff" --identity "$work/alice.id" "$@"; }
bob() { "$BIN/handoff" --identity "$work/bob.id" "$@"; }

step "alice uploads 32 MiB"
head -c $((32 << 20)) /dev/urandom > "$work/payload"
show alice put results.dat < "$work/payload"
sha256sum "$work/payload" | cut -c1-16

step "alice opens it read/write, exclusive, locking the header; the command exits at once"
KEY=$(alice open results.dat --mode rw --exclusive --lock 0:4096)
echo "resume key: $KEY"

step "bob is denied while alice's open is durable (exit 3)"
bob open results.dat || echo "exit $?"

step "alice reads through a duplicate handle on an encrypted second channel"
alice read "$KEY" --channel tls | sha256sum | cut -c1-16

step "the server is killed (kill -9) and restarted with the same --state"
kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null || true
start_server "$addr"
alice resume "$KEY" --json

step "alice goes quiet; after the durable timeout bob gets the file and changes it"
sleep 9
BKEY=$(bob open results.dat --mode rw)
printf 'bob was here' | bob write "$BKEY"
bob close "$BKEY"

step "alice comes back: her open is granted again, and she is told what happened"
alice resume "$KEY" --json
alice read "$KEY" --len 12; echo
alice close "$KEY"
step "done"
