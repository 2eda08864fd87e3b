// A cross-process lock on a cache entry: an exclusive-create lock file holding its owner's stamp
// (src/liveness.ts), so processes making one cache entry (an image, a snapshot), leasing a volume
// or resuming a paused sandbox take turns.
// A lock whose owner is gone (a recycled pid does not count), or that a crash left empty, is
// taken over.
import { randomBytes } from "node:crypto";
import { open, readFile, rename, rm, stat } from "node:fs/promises";

import { LockTimeoutError } from "./errors.js";
import { alive, ownStamp, parseStamp } from "./liveness.js";

// An empty lock file is one being written this instant; older than this, its writer crashed.
const EMPTY_LOCK_STALE_MS = 5000;

async function stale(lock: string): Promise<boolean> {
  const text = (await readFile(lock, "utf8").catch(() => "")).trim();
  let owner;
  try {
    owner = text ? parseStamp(JSON.parse(text)) : undefined;
  } catch {
    owner = undefined;
  }
  if (owner) return !alive(owner);
  const st = await stat(lock).catch(() => undefined);
  return st !== undefined && Date.now() - st.mtimeMs > EMPTY_LOCK_STALE_MS;
}

/** Runs `fn` while holding `${path}.lock`; waits (polling) up to `timeoutMs` for another holder. */
export async function withLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 30 * 60_000): Promise<T> {
  const lock = `${path}.lock`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const handle = await open(lock, "wx");
      await handle.writeFile(JSON.stringify(ownStamp()));
      await handle.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      if (await stale(lock)) {
        // Renamed aside, not removed: of two processes taking over the same stale lock, only one
        // rename finds it; the other's fails and it goes back to waiting.
        const aside = `${lock}.stale-${randomBytes(6).toString("hex")}`;
        if (await rename(lock, aside).then(() => true, () => false)) await rm(aside, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new LockTimeoutError(`waited too long for ${lock}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}
