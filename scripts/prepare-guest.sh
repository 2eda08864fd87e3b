#!/usr/bin/env bash
# Prepares what sandboxes boot from, in the cache (MSB_CACHE_DIR, else ~/.cache/microsandbox):
# the guest kernel and the offline images busybox, python and node. Idempotent and fast when
# everything is there. Building images needs root (debootstrap).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${MSB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microsandbox}"

bash "$here/guest-kernel.sh" "$cache" >/dev/null
for image in "${@:-busybox python node}"; do
  for name in $image; do
    if [ ! -f "$cache/local/$name/id" ] && [ "$(id -u)" -ne 0 ]; then
      echo "prepare-guest: building image $name needs root: sudo MSB_CACHE_DIR=$cache bash $0 $name" >&2
      exit 1
    fi
    bash "$here/build-image.sh" "$cache" "$name" >/dev/null
  done
done
echo "prepare-guest: kernel and images ready in $cache"
