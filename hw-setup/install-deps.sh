#!/usr/bin/env bash
# Installs what building and testing handoff needs on a Debian machine (run as root, or with
# sudo available). Idempotent: packages already present are skipped quickly.
#   hw-setup/install-deps.sh            build + test packages (incl. verbs headers, libclang)
#   hw-setup/install-deps.sh --bench    also the benchmark peers and report needs (nginx, curl, openssl,
#                                       nfs-kernel-server for the NFS/RDMA peer, a font)
#   hw-setup/install-deps.sh --rdma     also soft-RoCE testing: QEMU, rdma-core, perftest, fio,
#                                       libibverbs/librdmacm headers, libclang (for rdma-sys), and
#                                       a stock Debian kernel unpacked into target/rxe-guest/kernel
#                                       for hw-setup/rxe-guest.sh
# Options combine (--bench --rdma).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="$repo/target/rxe-guest"

bench=0 rdma=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    --rdma) rdma=1 ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown option '$arg' (expected --bench, --rdma)" >&2; exit 2 ;;
  esac
done

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# rdma-sys (the verbs FFI) is always built: it needs the verbs/rdmacm headers and libclang.
# etcd-client compiles etcd's protos (protoc, whose well-known types such as
# google/protobuf/descriptor.proto are in libprotobuf-dev, which --no-install-recommends skips);
# the cluster tests start a real etcd. The tests also signal processes (kill, from procps),
# limit a server's resources (prlimit, util-linux) and mount a tmpfs (mount); the fuzzers
# build libFuzzer, which is C++ (g++); the scripts read cargo's and the bench's JSON with
# python3; the mount tests mount FUSE file systems and unmount them with fusermount3 (fuse3);
# the metrics test checks handoffd's /metrics with promtool (prometheus), the package test the
# unit with systemd-analyze (systemd) and the man pages with man (man-db): a minimal Debian
# root has none of them.
want=(pkg-config ca-certificates libibverbs-dev librdmacm-dev libclang-dev protobuf-compiler libprotobuf-dev etcd-server
  procps util-linux mount g++ python3 fuse3 prometheus systemd man-db)
((bench)) && want+=(nginx-light curl openssl fonts-dejavu-core nfs-kernel-server)
((rdma)) && want+=(qemu-system-x86 busybox-static kmod cpio rdma-core ibverbs-utils perftest
  ibverbs-providers libibverbs-dev librdmacm-dev libclang-dev iproute2 fio)

updated=0
apt_update_once() {
  if ((!updated)); then
    $SUDO apt-get update -qq
    updated=1
  fi
}

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Newest linux-image-6.1.0-NN-amd64 (plain flavour, not -cloud/-rt/-dbg/-unsigned) that apt has a
# candidate version for. Prints nothing if there is none.
pick_kernel() {
  local names name best="" bestn=-1 n cand
  names=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' || true)
  for name in $names; do
    n=${name#linux-image-6.1.0-}
    n=${n%-amd64}
    ((n > bestn)) || continue
    cand=$(apt-cache policy "$name" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ -n "$cand" && "$cand" != "(none)" ]] || continue
    best=$name bestn=$n
  done
  echo "$best"
}

if ((rdma)); then
  if compgen -G "$cache/kernel/boot/vmlinuz-*" >/dev/null &&
    compgen -G "$cache/kernel/lib/modules/*/modules.dep" >/dev/null; then
    echo "install-deps: guest kernel already in $cache/kernel ($(basename "$cache"/kernel/boot/vmlinuz-*))"
  else
    pkg=$(pick_kernel)
    if [[ -z "$pkg" ]]; then
      apt_update_once
      pkg=$(pick_kernel)
    fi
    if [[ -z "$pkg" ]]; then
      echo "install-deps: no linux-image-6.1.0-NN-amd64 package has an apt candidate" \
        "(is this Debian bookworm with bookworm-security enabled?)" >&2
      exit 1
    fi
    echo "install-deps: guest kernel $pkg -> $cache/kernel"
    mkdir -p "$cache"
    dl="$cache/download"
    rm -rf "$dl" "$cache/kernel" "$cache/kernel.part"
    mkdir -p "$dl"
    # apt-get download as root warns that _apt cannot write here; the download is fine.
    (cd "$dl" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
    deb=$(find "$dl" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)
    if [[ -z "$deb" ]]; then
      echo "install-deps: apt-get download $pkg produced no .deb" >&2
      exit 1
    fi
    mkdir -p "$cache/kernel.part"
    dpkg-deb -x "$deb" "$cache/kernel.part"
    kver=$(basename "$(find "$cache/kernel.part/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit)")
    depmod -b "$cache/kernel.part" "$kver"
    mv "$cache/kernel.part" "$cache/kernel"
    rm -rf "$dl"
    echo "install-deps: guest kernel $kver ready"
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
echo "install-deps: ok"
