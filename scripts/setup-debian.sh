#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need. Idempotent: installs only what is
# missing. Run as root (or with sudo available).
set -euo pipefail

packages=(
  make g++ python3          # node-gyp (the N-API addon)
  musl-tools                # musl-gcc: the static guest agent
  libnanopb-dev nanopb protobuf-compiler  # protobuf: nanopb for the agent and helper, protoc for the TypeScript
  file                      # checks the agent is a static binary
  qemu-system-x86           # the VMM where libkrun is not available
  curl patch flex bison bc libelf-dev libssl-dev  # our guest kernel (scripts/build-kernel.sh)
  lz4 kmod cpio             # the benchmark's Debian kernel: vmlinux extraction, module dependencies
  e2fsprogs                 # mkfs.ext4 -d: image root disks
  debootstrap busybox-static  # offline images (python, node, busybox)
  zstd                      # tests: zstd-compressed layers
  docker-registry skopeo umoci openssl  # tests: a real registry, token auth; the pull benchmark
  libxml2-utils             # tests: xmllint checks the benchmark's SVG
  clang libclang-rt-14-dev  # tests: libFuzzer on the native decoders (scripts/fuzz.sh)
  clang-format              # npm run lint: the C and C++ of native/
  iproute2                  # tests: the network namespaces of the network policy tests
  tmux                      # tests: msb run -it and msb shell on a real terminal
)

# On x86_64, the aarch64 guest is built and tested too, and the linux-arm64 package made: its
# kernel, agent and native half with Debian's cross toolchains and arm64 multiarch musl and
# nanopb, booted by qemu-system-aarch64.
cross=()
if [ "$(uname -m)" = x86_64 ]; then
  cross=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu linux-libc-dev-arm64-cross musl-dev:arm64 libnanopb-dev:arm64 qemu-system-arm)
  packages+=("${cross[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all Debian packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "setup: installing ${missing[*]}"
if [ ${#cross[@]} -gt 0 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $sudo dpkg --add-architecture arm64
fi
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
