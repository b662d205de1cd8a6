#!/usr/bin/env bash
# Builds the Debian package of handoff: both binaries, the systemd unit, an example
# /etc/handoff/handoffd.toml (a conffile), man pages, shell completions and the Grafana
# dashboard. Nothing beyond dpkg-deb and gzip is needed.
#   dist/build-deb.sh                  release build, package in target/deb/
#   dist/build-deb.sh --bin-dir DIR --out DIR [--no-compress]
#                                      package binaries already built in DIR (the tests do,
#                                      uncompressed: debug binaries are large)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin_dir="" out="$repo/target/deb" compress=xz
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-compress) compress=none; shift ;;
    -h | --help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-deb: unknown option '$1' (expected --bin-dir DIR, --out DIR, --no-compress)" >&2; exit 2 ;;
  esac
done
if [[ -z "$bin_dir" ]]; then
  (cd "$repo" && cargo build --release --locked --bins -p handoff -p handoff-server)
  bin_dir="$repo/target/release"
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin_dir/handoff" "$stage/usr/bin/handoff"
install -D -m 0755 "$bin_dir/handoffd" "$stage/usr/bin/handoffd"
install -D -m 0644 "$here/handoffd.service" "$stage/lib/systemd/system/handoffd.service"
install -D -m 0644 "$here/handoffd.toml" "$stage/etc/handoff/handoffd.toml"
install -D -m 0644 "$here/grafana-dashboard.json" "$stage/usr/share/doc/handoff/grafana-dashboard.json"
install -D -m 0644 "$repo/README.md" "$stage/usr/share/doc/handoff/README.md"
mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/man/man8"
"$bin_dir/handoff" man-page | gzip -9n > "$stage/usr/share/man/man1/handoff.1.gz"
"$bin_dir/handoffd" --man-page | gzip -9n > "$stage/usr/share/man/man8/handoffd.8.gz"
install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"
"$bin_dir/handoff" completions bash > "$stage/usr/share/bash-completion/completions/handoff"
"$bin_dir/handoff" completions zsh > "$stage/usr/share/zsh/vendor-completions/_handoff"
"$bin_dir/handoff" completions fish > "$stage/usr/share/fish/vendor_completions.d/handoff.fish"

mkdir -p "$stage/DEBIAN"
echo /etc/handoff/handoffd.toml > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: handoff
Version: $version
Architecture: $arch
Maintainer: handoff developers <handoff@localhost>
Installed-Size: $size
Depends: libc6, libgcc-s1, libibverbs1, librdmacm1
Recommends: fuse3, rdma-core
Section: net
Priority: optional
Description: file access with durable, duplicable handles and an RDMA data path
 handoffd serves files with SMB3-style durable handles: an open survives a dropped
 network, a client reboot or a server restart for a timeout, and its resume key gives
 a duplicate handle with the same rights on a data channel, RDMA (rdma_cm and verbs)
 where the host has an RDMA NIC, TCP or TLS where it has none. handoff is the client:
 commands for scripts and a FUSE mount for unmodified programs.
CONTROL

mkdir -p "$out"
deb="$out/handoff_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compress" --build "$stage" "$deb" >/dev/null
echo "$deb"
