#!/usr/bin/env bash
# The benchmark's comparison kernel, and a kernel with modules for the test that boots one: Debian's
# cloud kernel package, fetched without installing it, cached under CACHE_DIR/debian-kernel/<KVER>/
# as an uncompressed ELF `vmlinux` for QEMU -M microvm (PVH boot) plus the virtio/overlay modules
# the guest needs, `modules/order` (their load order) and `modules/order.net` (what networking
# adds, loaded after). Writes CACHE_DIR/debian-kernel/current (= KVER); prints the vmlinux last.
# Sandboxes boot our own kernel (scripts/build-kernel.sh); this one only when named (`kernel`,
# MSB_KERNEL, msb bench --kernel). Idempotent: does nothing when `current` names a complete dir.
# Needs: apt-get, dpkg, lz4, kmod (modprobe, depmod); root only if the apt lists must be refreshed.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 CACHE_DIR" >&2
  exit 2
fi
cache="$1/debian-kernel"
# Bumped whenever what this script writes changes, so older caches are rebuilt.
format=2
modules=(virtio_mmio virtio_console virtio_blk overlay ext4)
# Loaded only when the sandbox has a network: a sandbox without one boots faster without them.
net_modules=(virtio_net)

# Fast path: a kernel dir is only ever created by an atomic rename once complete, so its presence suffices.
if [ -f "$cache/current" ]; then
  kver="$(cat "$cache/current")"
  if [ -n "$kver" ] && [ -f "$cache/$kver/vmlinux" ] && [ "$(cat "$cache/$kver/format" 2>/dev/null)" = "$format" ]; then
    echo "$cache/$kver/vmlinux"
    exit 0
  fi
fi

for tool in apt-get apt-cache dpkg lz4 modprobe depmod strip; do
  command -v "$tool" >/dev/null || { echo "guest-kernel: missing $tool" >&2; exit 1; }
done

mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.tmp.XXXXXX")" # same filesystem as the cache, so the final mv is an atomic rename
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/dl"

# The metapackage only depends on the versioned image package, which holds the kernel and its modules.
resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -1; }
pkg="$(resolve || true)"
if [ -z "$pkg" ]; then
  echo "guest-kernel: linux-image-cloud-amd64 unknown to apt; running apt-get update" >&2
  apt-get update -q >&2
  pkg="$(resolve)"
fi
[ -n "$pkg" ] || { echo "guest-kernel: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
# As root apt warns that _apt cannot write the temp dir and downloads unsandboxed: harmless.
(cd "$tmp/dl" && apt-get download -q "$pkg" >&2)
dpkg -x "$tmp"/dl/*.deb "$tmp/x"

kver="$(ls "$tmp/x/lib/modules")"
[ "$(echo "$kver" | wc -l)" -eq 1 ] || { echo "guest-kernel: expected one kernel in $pkg, got: $kver" >&2; exit 1; }
out="$tmp/out"
mkdir -p "$out/modules"

# vmlinuz is a bzImage whose payload is a legacy LZ4 frame: find its magic and decompress from there. lz4 exits
# non-zero on the bytes that follow the frame, so judge the result by its ELF header instead of the exit status.
vmlinuz="$tmp/x/boot/vmlinuz-$kver"
off="$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -1 | cut -d: -f1 || true)"
[ -n "$off" ] || { echo "guest-kernel: no LZ4 frame in $vmlinuz" >&2; exit 1; }
tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc > "$out/vmlinux" 2>/dev/null || true
[ "$(head -c 4 "$out/vmlinux" | od -An -tx1 | tr -d ' ')" = "7f454c46" ] ||
  { echo "guest-kernel: decompressed kernel is not an ELF" >&2; exit 1; }

# The package ships no modules.dep (the postinst would run depmod); build it inside the extract dir.
moddir="$tmp/x/lib/modules/$kver"
[ -f "$moddir/modules.dep" ] || depmod -b "$tmp/x" "$kver"

# --show-depends lists "insmod PATH [opts]" dependencies first, or "builtin NAME" for built-in ones (ext4 in the
# cloud kernel), so concatenating the lists and keeping first occurrences gives a valid load order.
seen=" "
# Prints the load order of the named modules and their dependencies, leaving out those listed
# before (in $seen), and copies them into the output.
load_order() {
  for m in "$@"; do
    deps="$(modprobe -S "$kver" -d "$tmp/x" --show-depends "$m")"
    while read -r kind path _; do
      [ "$kind" = insmod ] || continue
      name="$(basename "$path")"
      case "$name" in
        *.ko.xz) xz -dc "$path" > "$out/modules/${name%.xz}"; name="${name%.xz}" ;;
        *.ko.zst) zstd -qdc "$path" > "$out/modules/${name%.zst}"; name="${name%.zst}" ;;
        *.ko) cp "$path" "$out/modules/$name" ;;
        *) echo "guest-kernel: unexpected module file $path" >&2; exit 1 ;;
      esac
      # Without their signatures: verifying them is pure crypto, emulated instruction by instruction
      # under TCG (~30 ms of every boot), and the guest kernel enforces none.
      strip --strip-debug "$out/modules/$name"
      [[ "$seen" == *" $name "* ]] && continue
      seen+="$name "
      echo "$name"
    done <<< "$deps"
  done
}
load_order "${modules[@]}" > "$out/modules/order"
load_order "${net_modules[@]}" > "$out/modules/order.net"

echo "$format" > "$out/format"
rm -rf "${cache:?}/$kver"
mv "$out" "$cache/$kver"
echo "$kver" > "$tmp/current"
mv "$tmp/current" "$cache/current"
echo "$cache/$kver/vmlinux"
