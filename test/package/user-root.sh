#!/usr/bin/env bash
# A user's machine for the package test: a Debian minbase root with QEMU and the libraries a Node
# binary needs, a user who is not root (sbuser, uid 4242), and no compiler, make, musl or nanopb.
# Built once into CACHE_DIR/test-roots/user-HASH (HASH of this script) and reused; prints its path.
# Needs root and debootstrap.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
hash="$(sha256sum "$0" | cut -c1-12)"
roots="$1/test-roots"
final="$roots/user-$hash"
if [ -f "$final/.complete" ]; then
  echo "$final"
  exit 0
fi
mkdir -p "$roots"
for old in "$roots"/user-*; do [ "$old" = "$final" ] || rm -rf "$old"; done
tmp="$(mktemp -d "$roots/.tmp-user.XXXXXX")"
cleanup() {
  awk -v t="$tmp/" 'index($2, t) == 1 { print $2 }' /proc/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# libstdc++6: Node's official binary links it; qemu-system-x86: the VMM a user installs.
debootstrap --variant=minbase --include=qemu-system-x86,libstdc++6 bookworm "$tmp/root" "${MSB_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
  >"$tmp/debootstrap.log" 2>&1 || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
chroot "$tmp/root" useradd --create-home --uid 4242 --user-group --shell /bin/bash sbuser
rm -rf "$tmp/root"/var/cache/apt/archives/*.deb "$tmp/root"/var/lib/apt/lists/*
# Where as-user.sh binds the host's Node binary and npm: this root holds no Node of its own.
mkdir -p "$tmp/root/opt/node/bin" "$tmp/root/opt/node/lib/node_modules/npm" "$tmp/root/pkgs" "$tmp/root/oldroot"
touch "$tmp/root/opt/node/bin/node"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$tmp/root/opt/node/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$tmp/root/opt/node/bin/npx"
touch "$tmp/root/.complete"
mv "$tmp/root" "$final"
echo "$final"
