#!/usr/bin/env bash
# Fuzzes the guest agent's frame splitting and message decoding (native/agent/frame.c) with
# libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer, starting from the committed corpus
# (native/agent/fuzz/corpus: valid frames of every host message). Needs clang and
# libclang-rt-14-dev (scripts/setup-debian.sh installs them) and the agent's generated code
# (make -C native/agent).
#   scripts/fuzz.sh [SECONDS]   default 60; new inputs that add coverage go to build-fuzz/corpus,
#                               a crash to build-fuzz/crash-* (exit status non-zero)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
arch=$(uname -m)
gen="build-guest/$arch/gen"
nanopb=$(ls /usr/lib/*-linux-*/libprotobuf-nanopb.a /usr/lib/libprotobuf-nanopb.a 2>/dev/null | head -1 || true)
[ -f "$gen/agent.pb.c" ] || make -s -C native/agent
command -v clang >/dev/null || { echo "fuzz: clang not found: apt-get install clang libclang-rt-14-dev" >&2; exit 2; }
mkdir -p build-fuzz/corpus
clang -g -O1 -std=c11 -D_GNU_SOURCE -DPB_ENABLE_MALLOC -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I "$gen" -I native/agent -o build-fuzz/agent-frames \
  native/agent/fuzz/frames.c native/agent/frame.c "$gen/agent.pb.c" "$nanopb"
# -rss_limit_mb: the decoder allocates what a frame asks for, within MAX_FRAME_BYTES.
exec build-fuzz/agent-frames -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=70000 \
  -artifact_prefix=build-fuzz/ build-fuzz/corpus native/agent/fuzz/corpus
