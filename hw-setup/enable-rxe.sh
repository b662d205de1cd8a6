#!/usr/bin/env bash
# Creates a soft-RoCE device (rxe0) on a real Linux host whose kernel has RDMA support, so the
# RDMA tests and benchmarks can run there without the QEMU guest (hw-setup/rxe-guest.sh).
# Run as root (or with sudo available); needs rdma-core, ibverbs-utils and iproute2
# (hw-setup/install-deps.sh --rdma).
#   hw-setup/enable-rxe.sh [NETDEV]    NETDEV defaults to the interface of the default route
# Does nothing if an rxe device on NETDEV already exists. Prints ibv_devices at the end.
set -euo pipefail

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

for tool in rdma ibv_devices ip; do
  command -v "$tool" >/dev/null ||
    { echo "enable-rxe: '$tool' not found; run hw-setup/install-deps.sh --rdma" >&2; exit 1; }
done

netdev=${1:-}
if [[ -z "$netdev" ]]; then
  netdev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  [[ -n "$netdev" ]] || { echo "enable-rxe: no default route; name the interface: $0 NETDEV" >&2; exit 1; }
fi
[[ -e "/sys/class/net/$netdev" ]] || { echo "enable-rxe: no network interface '$netdev'" >&2; exit 1; }

if [[ ! -d /sys/module/rdma_rxe ]]; then
  if ! $SUDO modprobe rdma_rxe 2>/dev/null; then
    echo "enable-rxe: this kernel ($(uname -r)) has no rdma_rxe module (needs CONFIG_RDMA_RXE;" \
      "kernels built without CONFIG_INFINIBAND cannot do RDMA at all)." >&2
    echo "enable-rxe: use hw-setup/rxe-guest.sh to run RDMA tests in a QEMU guest instead." >&2
    exit 1
  fi
fi

# An rxe device is a software InfiniBand CA (node_type 1, unlike siw's RNIC) with no parent
# hardware device. `rdma link` lines look like: link rxe0/1 state ACTIVE ... netdev eth0
is_rxe() {
  [[ ! -e "/sys/class/infiniband/$1/device" ]] &&
    [[ "$(cat "/sys/class/infiniband/$1/node_type" 2>/dev/null)" == 1:* ]]
}
existing=""
while read -r dev; do
  if is_rxe "$dev"; then existing=$dev; break; fi
done < <(rdma link show 2>/dev/null |
  awk -v nd="$netdev" '{for (i = 1; i < NF; i++) if ($i == "netdev" && $(i + 1) == nd) {split($2, a, "/"); print a[1]}}')

if [[ -n "$existing" ]]; then
  echo "enable-rxe: $existing already on $netdev"
else
  name=rxe0 n=0
  while [[ -e "/sys/class/infiniband/$name" ]]; do
    n=$((n + 1))
    name="rxe$n"
  done
  $SUDO rdma link add "$name" type rxe netdev "$netdev"
  echo "enable-rxe: created $name on $netdev"
fi
ibv_devices
