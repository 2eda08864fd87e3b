// The native parts, found by src/artifacts.ts (a checkout's build/Release, else this host's
// platform package): the N-API addon (host plumbing Node lacks) and the per-VM helper msb-vmm
// with its preloads.
import { createRequire } from "node:module";

import { nativeArtifact } from "./artifacts.js";

const require = createRequire(import.meta.url);

interface Addon {
  socketPair(): [number, number];
}

let addon: Addon | undefined;

function nativeAddon(): Addon {
  addon ??= require(nativeArtifact("microsandbox.node").path) as Addon;
  return addon;
}

/** A connected pair of unix stream sockets (close-on-exec): one end for us, one for a child. */
export function socketPair(): [number, number] {
  return nativeAddon().socketPair();
}

/** msb-vmm, the per-VM helper. */
export function vmmHelperPath(): string {
  return nativeArtifact("msb-vmm").path;
}
