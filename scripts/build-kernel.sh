#!/usr/bin/env bash
# Builds our guest kernel for ARCH (x86_64: a PVH-bootable ELF vmlinux; aarch64: an Image) from
# the pinned Debian linux-source package (guest/kernel/source.env) with our patches
# (guest/kernel/patches/, in order) and our config fragments (guest/kernel/common.config +
# ARCH.config, merged over tinyconfig), reproducibly.
#   CACHE_DIR/kernels/ARCH-HASH/{vmlinux|Image,config}  HASH of (source pin, patches, fragments, recipe)
# then copies the kernel to build-guest/ARCH/, where the package looks for it. Idempotent: a
# cached build is reused. Prints the kernel's path last.
# Needs: curl, patch, make, gcc (aarch64-linux-gnu-gcc for aarch64), flex, bison, bc, libelf-dev.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 x86_64|aarch64 [CACHE_DIR]" >&2
  exit 2
fi
arch="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${2:-${MSB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microsandbox}}/kernels"
conf="$here/guest/kernel"
# Bumped whenever how this script builds changes the result.
recipe=2

case "$arch" in
  x86_64) karch=x86_64; cross=""; target=vmlinux; built=vmlinux ;;
  aarch64) karch=arm64; cross=aarch64-linux-gnu-; target=Image; built=arch/arm64/boot/Image ;;
  *) echo "build-kernel: unknown architecture '$arch' (x86_64, aarch64)" >&2; exit 2 ;;
esac

# shellcheck source=../guest/kernel/source.env
. "$conf/source.env"
export KBUILD_BUILD_TIMESTAMP KBUILD_BUILD_USER KBUILD_BUILD_HOST KBUILD_BUILD_VERSION
patches=("$conf"/patches/*.patch)
patch_set="$(cat "${patches[@]}" | sha256sum | cut -c1-12)"
hash="$(cat "$conf/source.env" "${patches[@]}" "$conf/common.config" "$conf/$arch.config" <(echo "recipe $recipe $arch") | sha256sum | cut -c1-16)"
out="$cache/$arch-$hash"
install_to="$here/build-guest/$arch/$target"

install_kernel() {
  mkdir -p "$(dirname "$install_to")"
  if ! cmp -s "$out/$target" "$install_to"; then
    cp "$out/$target" "$install_to.tmp"
    mv "$install_to.tmp" "$install_to"
  fi
  echo "$install_to"
}

if [ -f "$out/$target" ]; then
  install_kernel
  exit 0
fi

for tool in curl patch make flex bison bc "${cross}gcc"; do
  command -v "$tool" >/dev/null || { echo "build-kernel: missing $tool (bash scripts/setup-debian.sh installs it)" >&2; exit 1; }
done

mkdir -p "$cache"
# The source is unpacked and patched once per pinned version and patch set, and shared by every
# build of them.
src_id="$KERNEL_PACKAGE_VERSION-$patch_set"
src="$cache/src/$src_id"
# Trees of other versions or patch sets are done with: a source tree is ~1.5 GB.
for old in "$cache"/src/*; do [ "$old" = "$src" ] || rm -rf "$old"; done
if [ ! -f "$src/.complete" ]; then
  tmp="$(mktemp -d "$cache/.src.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "build-kernel: fetching $KERNEL_PACKAGE $KERNEL_PACKAGE_VERSION" >&2
  curl -fsSL --retry 3 -o "$tmp/src.deb" "$KERNEL_PACKAGE_URL"
  echo "$KERNEL_PACKAGE_SHA256  $tmp/src.deb" | sha256sum -c --quiet - ||
    { echo "build-kernel: $KERNEL_PACKAGE_URL does not have the pinned digest $KERNEL_PACKAGE_SHA256" >&2; exit 1; }
  # A .deb is an ar archive; data.tar.xz holds /usr/src/linux-source-X.Y.tar.xz.
  (cd "$tmp" && ar x src.deb data.tar.xz && tar xf data.tar.xz --wildcards './usr/src/*.tar.xz')
  mkdir "$tmp/tree"
  tar xf "$tmp"/usr/src/*.tar.xz -C "$tmp/tree" --strip-components=1
  for p in "${patches[@]}"; do patch -s -p1 --no-backup-if-mismatch -d "$tmp/tree" <"$p"; done
  touch "$tmp/tree/.complete"
  rm -rf "$src"
  mkdir -p "$(dirname "$src")"
  mv "$tmp/tree" "$src"
  rm -rf "$tmp"
  trap - EXIT
fi

# Objects stay between builds of one architecture and source, so a changed fragment rebuilds only
# what it touches; another source tree starts afresh (kbuild's dependencies name the old one).
obj="$cache/obj-$arch-$src_id"
for old in "$cache"/obj-"$arch"-*; do [ "$old" = "$obj" ] || rm -rf "$old"; done
mkdir -p "$obj"
kmake() { make -s -C "$src" O="$obj" ARCH="$karch" CROSS_COMPILE="$cross" "$@"; }
cat "$conf/common.config" "$conf/$arch.config" >"$obj/fragment.config"
kmake tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$obj/fragment.config" >/dev/null
kmake olddefconfig
# A value Kconfig overruled (a dependency missing, a symbol renamed) fails the build rather than
# shipping a kernel without something we asked for.
bad=0
while IFS='=' read -r key want; do
  got="$(sed -n "s/^$key=//p" "$obj/.config")"
  [ "${got:-n}" = "$want" ] || { echo "build-kernel: $key=$want did not take (got ${got:-n})" >&2; bad=1; }
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$obj/fragment.config")
[ "$bad" -eq 0 ] || exit 1

echo "build-kernel: building Linux $KERNEL_PACKAGE_VERSION for $arch (a few minutes)" >&2
start=$SECONDS
kmake -j"$(nproc)" "$target"
tmp="$(mktemp -d "$cache/.out.XXXXXX")"
# QEMU loads an ELF kernel's segments and PVH note; its symbol table (kallsyms has its own) is
# 1.3 MB of nothing to a guest.
case "$target" in
  vmlinux) "${cross}strip" -o "$tmp/$target" "$obj/$built" ;;
  *) cp "$obj/$built" "$tmp/$target" ;;
esac
cp "$obj/.config" "$tmp/config"
echo "$KERNEL_PACKAGE $KERNEL_PACKAGE_VERSION, $("${cross}gcc" --version | head -1), built in $((SECONDS - start)) s" >"$tmp/build-info"
rm -rf "$out"
mv "$tmp" "$out"
# Earlier builds for this architecture are superseded.
for old in "$cache/$arch"-*; do [ "$old" = "$out" ] || rm -rf "$old"; done
install_kernel
