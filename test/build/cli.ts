// What the msb build tests share: msb run as a user runs it, on a throwaway cache whose local/ is
// the run's own (local:busybox is there), and what it tells of the VMs a command booted.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { cacheDir } from "../../src/paths.js";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const exec = promisify(execFile);

/** A temp dir holding cache/ (its local/ the run's own cache's, which MSB_CACHE_DIR names in CI). Remove root afterwards. */
export function throwawayCache(prefix: string): { root: string; cache: string } {
  const root = realpathSync(mkdtempSync(path.join(tmpdir(), prefix)));
  const cache = path.join(root, "cache");
  mkdirSync(cache);
  symlinkSync(path.join(cacheDir(), "local"), path.join(cache, "local"));
  return { root, cache };
}

/** msb with `args` on `cache`: its exit code and output. */
export async function msbOn(cache: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [MSB, ...args], { env: { ...process.env, MSB_CACHE_DIR: cache } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** What boots a VM leaves a sandbox log in the cache: the honest count of VMs a command booted. */
export const sandboxLogs = (cache: string) =>
  existsSync(path.join(cache, "logs", "sandboxes")) ? readdirSync(path.join(cache, "logs", "sandboxes")).filter((f) => f.endsWith(".jsonl")) : [];

/** The step lines of msb build's progress: [N/M] STEP, with whether it ended " CACHED". */
export const stepLines = (stderr: string) =>
  stderr
    .split("\n")
    .filter((l) => /^\[\d+\/\d+\] /.test(l))
    .map((l) => ({ step: l.replace(/ CACHED$/, ""), cached: l.endsWith(" CACHED") }));

/** The processes still running off `cache`: QEMU's command line names the image's disk and the initramfs in it. */
export const runningOn = (cache: string) =>
  readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(cache);
      } catch {
        return false;
      }
    });
