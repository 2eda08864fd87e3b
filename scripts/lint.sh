#!/usr/bin/env bash
# npm run lint: the TypeScript and JavaScript by Biome (its lint rules and formatter, biome.jsonc),
# the tests type-checked as strictly as the sources (tsconfig.test.json), and the C and C++ of
# native/ by clang-format (.clang-format). npm test runs it first; npm run format fixes what a
# formatter can.
#   scripts/lint.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
native() { git ls-files -z 'native/*.c' 'native/*.h' 'native/*.cc' 'test/native/*.c'; }
if [ "${1:-}" = "--fix" ]; then
  npx biome check --write .
  native | xargs -0 clang-format -i
  exit 0
fi
npx biome check .
npx tsc -p tsconfig.test.json
native | xargs -0 clang-format --dry-run --Werror
