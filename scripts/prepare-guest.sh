#!/usr/bin/env bash
# Prepares what sandboxes boot from: our guest kernel (built once, cached by its hash in
# MSB_CACHE_DIR, else ~/.cache/microsandbox, and put in build-guest/), and the offline images
# busybox, python and node; on x86_64 also the aarch64 guest's kernel, agent and busybox image.
# Arguments name the images (default: all). Idempotent and fast when everything is there.
# Building images needs root (debootstrap).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${MSB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microsandbox}"
default="busybox python node"
[ "$(uname -m)" = x86_64 ] && default+=" busybox-aarch64"

bash "$here/build-kernel.sh" "$(uname -m)" "$cache" >/dev/null
if [[ " ${*:-$default} " == *" busybox-aarch64 "* ]]; then
  bash "$here/build-kernel.sh" aarch64 "$cache" >/dev/null
  make -s -C "$here/../native/agent" ARCH=aarch64
fi
for image in "${@:-$default}"; do
  for name in $image; do
    if [ ! -f "$cache/local/$name/id" ] && [ "$(id -u)" -ne 0 ]; then
      echo "prepare-guest: building image $name needs root: sudo MSB_CACHE_DIR=$cache bash $0 $name" >&2
      exit 1
    fi
    bash "$here/build-image.sh" "$cache" "$name" >/dev/null
  done
done
echo "prepare-guest: kernel and images ready in $cache"
