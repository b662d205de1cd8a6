#!/usr/bin/env bash
# Installs what building and testing handoff needs on a Debian machine (run as root, or with
# sudo available). Idempotent: packages already present are skipped quickly.
#   hw-setup/install-deps.sh            build + test packages
#   hw-setup/install-deps.sh --bench    also the benchmark peers (nginx, curl)
set -euo pipefail

want=(pkg-config ca-certificates)
if [[ "${1:-}" == "--bench" ]]; then
  want+=(nginx-light curl)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
echo "install-deps: ok"
