#!/usr/bin/env bash
# Before/after for a change to the RDMA path: builds REV's binaries and this tree's, then runs
# the rdma suite (handoff next to ib_write_bw/ib_read_bw) for each, alternating old, new, old,
# new in ONE rxe guest boot, so drift in the emulated guest hits both alike. Prints each row's
# ratio (handoff ÷ its perftest peer, measured in the same run) and server CPU per GiB.
#   bench/ab.sh REV [ROUNDS]     e.g. bench/ab.sh a196c62 2
# Results: target/ab/{old,new}-N.json. The guest is emulated (TCG): the spread between two runs
# of one binary is large, so compare the spread as well as the means.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab.sh REV [ROUNDS]}
rounds=${2:-2}
hw-setup/install-deps.sh --rdma --bench
ab=$PWD/target/ab
rm -rf "$ab"; mkdir -p "$ab/old-bin" "$ab/new-bin"
old=$(mktemp -d /tmp/handoff-ab.XXXXXX)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || true' EXIT
git worktree add -q --detach "$old" "$rev"
echo "== building $rev (old) and this tree (new), release"
# Its own target directory: in a shared one the old checkout's fresh files would make cargo
# take its build of the workspace crates as this tree's.
(cd "$old" && CARGO_TARGET_DIR="$OLDPWD/target/ab-old" cargo build --release --locked --workspace --bins -q)
cp target/ab-old/release/{handoff,handoffd,compare} "$ab/old-bin/"
cargo build --release --locked -p handoff -p handoff-server -p handoff-bench -q
cp target/release/{handoff,handoffd,compare} "$ab/new-bin/"
cat > "$ab/run.sh" <<RUN
set -u
for round in \$(seq 1 $rounds); do
  for v in old new; do
    echo "== round \$round: \$v"
    target/ab/\$v-bin/compare --suites rdma --bin-dir target/ab/\$v-bin --work /tmp/hb-\$v \
      --out target/ab/\$v-\$round.json 2>&1 | grep -E "^rdma " || true
  done
done
RUN
hw-setup/rxe-guest.sh --nics 2 --mem 3072 --timeout $((1500 * rounds)) -- bash target/ab/run.sh
python3 - "$ab" "$rounds" <<'PY'
import json, sys, collections
ab, rounds = sys.argv[1], int(sys.argv[2])
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for v in ("old", "new"):
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{ab}/{v}-{r}.json"))["rows"]:
            if row["suite"] == "rdma" and row.get("ratio") is not None:
                rows[(row["size"], row["tool"], row["op"])][v].append(row)
print(f"{'size':>9} {'tool':<20} {'op':<6} {'ratio old':<16} {'ratio new':<16} {'cpu s/GiB old':<16} cpu s/GiB new")
for key in sorted(rows):
    o, n = rows[key]["old"], rows[key]["new"]
    ratios = lambda l: ",".join(f"{x['ratio']:.2f}" for x in l)
    cpu = lambda l: ",".join(f"{x.get('server_cpu_s_per_gib') or 0:.1f}" for x in l)
    print(f"{key[0]:>9} {key[1]:<20} {key[2]:<6} {ratios(o):<16} {ratios(n):<16} {cpu(o):<16} {cpu(n)}")
PY
