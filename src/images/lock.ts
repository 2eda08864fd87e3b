// A cross-process lock on a cache entry: an exclusive-create lock file holding the owner's pid,
// so two processes materializing one image neither corrupt nor duplicate it. A lock whose owner
// died is taken over.
import { open, readFile, rm } from "node:fs/promises";

import { MicrosandboxError } from "../errors.js";

export class LockTimeoutError extends MicrosandboxError {
  override readonly code = "MSB_LOCK_TIMEOUT";
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Runs `fn` while holding `${path}.lock`; waits (polling) up to `timeoutMs` for another holder. */
export async function withLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 30 * 60_000): Promise<T> {
  const lock = `${path}.lock`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const handle = await open(lock, "wx");
      await handle.writeFile(String(process.pid));
      await handle.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const owner = Number((await readFile(lock, "utf8").catch(() => "")).trim());
      // An empty file is a lock being written right now; a dead owner's lock is stale.
      if (owner && !alive(owner)) {
        await rm(lock, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new LockTimeoutError(`waited too long for ${lock} (held by pid ${owner || "?"})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}
