#!/usr/bin/env bash
# Builds an offline sandbox image from Debian packages into CACHE_DIR/local/NAME/ (reference
# "local:NAME"):
#   rootfs/  the image's files      id  a content id (sha256 of the file manifest)
# NAME: busybox (busybox-static applets only, a few MB), python (debootstrap minbase +
# python3: the whole standard library, so code written for python:3.12-slim runs; `python` as
# the official images have it; curl and the CA bundle, for HTTPS from the guest), node
# (minbase + nodejs); busybox-aarch64, busybox for aarch64 guests (Debian's arm64 package).
# Idempotent: an existing image is kept.
# Needs root (debootstrap, file ownership), busybox-static and debootstrap; for busybox-aarch64,
# apt knowing the arm64 architecture (dpkg --add-architecture arm64, as setup-debian.sh does).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 CACHE_DIR busybox|python|node|busybox-aarch64" >&2
  exit 2
fi
images="$1/local"
name="$2"
final="$images/$name"
if [ -f "$final/id" ]; then
  echo "$final"
  exit 0
fi

mkdir -p "$images"
tmp="$(mktemp -d "$images/.tmp-$name.XXXXXX")"
# debootstrap mounts /proc and /sys inside the root it builds; one that is interrupted leaves them
# mounted. They come off before the half-made image is removed.
cleanup() {
  awk -v t="$tmp/" 'index($2, t) == 1 { print $2 }' /proc/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
root="$tmp/rootfs"
mirror="${MSB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

minbase() {
  debootstrap --variant=minbase --include="$1" bookworm "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
    tail -20 "$tmp/debootstrap.log" >&2
    exit 1
  }
  # Package caches and lists are dead weight in a read-only image.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
}

# A root of busybox's applets, from the busybox binary $1.
busybox_root() {
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,dev,proc,sys,run}
  chmod 1777 "$root/tmp"
  cp "$1" "$root/bin/busybox"
  # This machine's busybox names the applets: the same Debian version is built with the same set
  # for every architecture, and a foreign one cannot run here.
  for applet in $(/bin/busybox --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
}

case "$name" in
  busybox | busybox-aarch64)
    if [ "$name" = busybox ]; then
      busybox_root /bin/busybox
    else
      (cd "$tmp" && apt-get download -q busybox-static:arm64 >"$tmp/apt.log" 2>&1) || {
        cat "$tmp/apt.log" >&2
        echo "build-image: busybox-static:arm64 cannot be fetched: dpkg --add-architecture arm64 && apt-get update" >&2
        exit 1
      }
      dpkg -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
      busybox_root "$tmp/x/bin/busybox"
      rm -rf "$tmp"/x "$tmp"/*.deb "$tmp/apt.log"
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    ;;
  python) minbase python3,python-is-python3,curl,ca-certificates ;;
  node) minbase nodejs ;;
  *)
    echo "build-image: unknown image '$name' (busybox, python, node, busybox-aarch64)" >&2
    exit 2
    ;;
esac

# The id names the content: paths, types, modes, owners, sizes and link targets, not mtimes.
(cd "$root" && find . -printf '%p %y %m %U %G %s %l\n' | LC_ALL=C sort | sha256sum | cut -c1-32) >"$tmp/id"
rm -f "$tmp/debootstrap.log"
mv "$tmp" "$final"
trap - EXIT
echo "$final"
