// A cross-process lock on a cache entry: an exclusive-create lock file holding its owner's stamp
// (src/liveness.ts), so processes making one cache entry (an image, a snapshot), leasing a volume
// or resuming a paused sandbox take turns.
// A lock whose owner is gone (a recycled pid does not count), or that a crash left empty, is
// taken over.
import { type FileHandle, open, readFile, rm, stat } from "node:fs/promises";

import { LockTimeoutError } from "./errors.js";
import { alive, ownStamp, type ProcessStamp, parseStamp } from "./liveness.js";

// An empty lock file, or a takeover's guard, is one being written this instant; older than this,
// its writer crashed.
const STALE_WRITE_MS = 5000;

const readLock = (lock: string) => readFile(lock, "utf8").catch(() => undefined);
const age = async (file: string) => {
  const st = await stat(file).catch(() => undefined);
  return st ? Date.now() - st.mtimeMs : undefined;
};

// Whether the lock holding `text` is stale: its owner is gone, or it was left empty by a crash.
async function stale(lock: string, text: string): Promise<boolean> {
  let owner: ProcessStamp | undefined;
  try {
    owner = text.trim() ? parseStamp(JSON.parse(text)) : undefined;
  } catch {
    owner = undefined;
  }
  if (owner) return !alive(owner);
  const old = await age(lock);
  return old !== undefined && old > STALE_WRITE_MS;
}

/**
 * Removes the stale lock that held `judged`, unless another process got there first. Two
 * processes judging one lock stale take turns under a guard, and each removes only the lock it
 * judged: the one that lost finds a new lock (the winner's, alive) and leaves it.
 */
async function takeOver(lock: string, judged: string): Promise<void> {
  const guard = `${lock}.takeover`;
  let handle: FileHandle;
  try {
    handle = await open(guard, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    // Another process is taking it over now; one that died doing so left its guard behind.
    if (((await age(guard)) ?? 0) > STALE_WRITE_MS) await rm(guard, { force: true });
    return;
  }
  try {
    await handle.close();
    if ((await readLock(lock)) === judged && (await stale(lock, judged))) await rm(lock, { force: true });
  } finally {
    await rm(guard, { force: true });
  }
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
      const text = await readLock(lock);
      if (text !== undefined && (await stale(lock, text))) {
        await takeOver(lock, text);
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
