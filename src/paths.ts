// Where the package keeps things: a per-user cache (kernels, initramfs, images, disks) and
// short-lived runtime directories for each VM (sockets, console logs).
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** MSB_CACHE_DIR, else $XDG_CACHE_HOME/microsandbox, else ~/.cache/microsandbox. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MSB_CACHE_DIR) return path.resolve(env.MSB_CACHE_DIR);
  const base = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(base, "microsandbox");
}

/** A fresh private directory for one VM. Kept short: unix socket paths are limited to 107 bytes. */
export function makeRuntimeDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), "msb-"));
}
