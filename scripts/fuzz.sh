#!/usr/bin/env bash
# libFuzzer (with AddressSanitizer and UndefinedBehaviorSanitizer) on the native code that reads
# untrusted bytes, from committed seed corpora. Needs clang and libclang-rt-14-dev
# (scripts/setup-debian.sh installs them).
#   scripts/fuzz.sh [SECONDS] [TARGET]   default 60 s of every target; TARGET is one of
#     frames  the guest agent's frame splitting and message decoding (native/agent/frame.c;
#             needs the agent's generated code: make -C native/agent)
#     dns     msb-vmm's network supervisor's reading of DNS responses (native/vmm/dns.c)
#   New inputs that add coverage go to build-fuzz/corpus-TARGET, a crash to build-fuzz/crash-*
#   (exit status non-zero).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
targets=${2:-frames dns}
command -v clang >/dev/null || { echo "fuzz: clang not found: apt-get install clang libclang-rt-14-dev" >&2; exit 2; }
flags=(-g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
for target in $targets; do
  mkdir -p "build-fuzz/corpus-$target"
  case $target in
    frames)
      arch=$(uname -m)
      gen="build-guest/$arch/gen"
      # This machine's own nanopb: other architectures' may be installed beside it (multiarch).
      nanopb=$(ls "/usr/lib/$(gcc -print-multiarch)/libprotobuf-nanopb.a" /usr/lib/libprotobuf-nanopb.a 2>/dev/null | head -1 || true)
      [ -f "$gen/agent.pb.c" ] || make -s -C native/agent
      clang "${flags[@]}" -DPB_ENABLE_MALLOC -I "$gen" -I native/agent -o build-fuzz/agent-frames \
        native/agent/fuzz/frames.c native/agent/frame.c "$gen/agent.pb.c" "$nanopb"
      # -rss_limit_mb: the decoder allocates what a frame asks for, within MAX_FRAME_BYTES.
      build-fuzz/agent-frames -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=70000 \
        -artifact_prefix=build-fuzz/ build-fuzz/corpus-frames native/agent/fuzz/corpus ;;
    dns)
      clang "${flags[@]}" -I native/vmm -o build-fuzz/vmm-dns native/vmm/fuzz/dns.c native/vmm/dns.c
      build-fuzz/vmm-dns -max_total_time="$seconds" -max_len=4096 \
        -artifact_prefix=build-fuzz/ build-fuzz/corpus-dns native/vmm/fuzz/corpus ;;
    *) echo "fuzz: unknown target $target (frames, dns)" >&2; exit 2 ;;
  esac
done
