#!/usr/bin/env bash
# Compiles proto/e2b/*.proto (our own description of E2B's envd services) into the descriptor set
# msb server loads at run time (proto/e2b/envd.binpb, committed: running the server needs no
# protoc). test/server/envd-descriptors.test.ts checks the committed set matches the sources.
#   scripts/gen-envd.sh [OUT]   default proto/e2b/envd.binpb
set -euo pipefail
cd "$(dirname "$0")/.."
protoc -I proto/e2b -o "${1:-proto/e2b/envd.binpb}" process.proto filesystem.proto
