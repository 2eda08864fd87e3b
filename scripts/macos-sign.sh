#!/usr/bin/env bash
# macOS: signs the per-VM helper with the Hypervisor.framework entitlement, without which libkrun
# cannot create a VM there. Ad-hoc signature by default; pass an identity to sign for distribution.
#   bash scripts/macos-sign.sh [IDENTITY]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# The helper the package uses: beside the addon node-gyp-build loads (a local build or a prebuild).
helper="$(cd "$here" && node -e 'const p=require("path");console.log(p.join(p.dirname(require("node-gyp-build").path(".")),"msb-vmm"))')"
identity="${1:--}"
[ "$(uname -s)" = Darwin ] || { echo "macos-sign: only needed on macOS" >&2; exit 0; }
[ -x "$helper" ] || { echo "macos-sign: $helper is missing: run npm install first" >&2; exit 1; }
entitlements="$(mktemp -t msb-entitlements).plist"
trap 'rm -f "$entitlements"' EXIT
cat >"$entitlements" <<'PLIST'
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>com.apple.security.hypervisor</key>
  <true/>
</dict>
</plist>
PLIST
codesign --force --sign "$identity" --entitlements "$entitlements" "$helper"
codesign --display --entitlements - "$helper"
