// The native parts: the N-API addon (host plumbing Node lacks), loaded through node-gyp-build
// (prebuilds first, then build/Release), and the per-VM helper msb-vmm, which sits beside
// whichever addon was loaded.
import { accessSync, constants } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { VmmHelperError } from "./errors.js";

const require = createRequire(import.meta.url);
const PACKAGE_ROOT = fileURLToPath(new URL("..", import.meta.url));

interface Addon {
  socketPair(): [number, number];
}

let addon: Addon | undefined;
let addonPath: string | undefined;

function nativeAddon(): Addon {
  if (!addon) {
    const gypBuild = require("node-gyp-build") as { (dir: string): Addon; resolve(dir: string): string };
    addonPath = gypBuild.resolve(PACKAGE_ROOT);
    addon = require(addonPath) as Addon;
  }
  return addon;
}

/** A connected pair of unix stream sockets (close-on-exec): one end for us, one for a child. */
export function socketPair(): [number, number] {
  return nativeAddon().socketPair();
}

/** msb-vmm, the per-VM helper: beside the addon that was loaded, a prebuild's or a local build's. */
export function vmmHelperPath(): string {
  nativeAddon();
  const helper = path.join(path.dirname(addonPath!), "msb-vmm");
  try {
    accessSync(helper, constants.X_OK);
  } catch (err) {
    throw new VmmHelperError(
      `the VM helper ${helper} is missing beside the native addon ${addonPath}: rebuild the native parts (npm rebuild microsandbox)`,
      { cause: err },
    );
  }
  return helper;
}
