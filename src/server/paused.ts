// The server's record of each paused sandbox, kept in the cache beside the library's paused state
// (src/sandbox/paused.ts), so that a server restarted on the same cache still has them: who owns
// each, its token, metadata and protocol state, and which server holds it now. A record whose
// holder is gone (SIGKILLed, or let go at a close with outlive) is taken over by the next server
// to start; two starting at once do not both take one (the one whose rename wins has it).
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";

import { alive, ownStamp, type ProcessStamp, parseStamp } from "../liveness.js";
import { withLock } from "../lock.js";
import { cacheDir } from "../paths.js";
import { checkName } from "../sandbox/options.js";
import { pausedDir, pausedRoot, withPausedLock } from "../sandbox/paused.js";
import type { ServerRecord } from "./sandboxes.js";

// A server writes a paused sandbox's record right after its pause: saved state without a record
// for longer than this was left by a server that died in between.
const UNRECORDED_MS = 10 * 60_000;
/** The name a server gives the sandbox it calls `id` (its Sandbox name, and its paused state's). */
export const serverName = (id: string) => `srv-${id}`;
export const SERVER_NAME = /^srv-([0-9a-f]{16})$/;
// A record is written by this server; one larger than this is not one of ours.
const MAX_RECORD_BYTES = 4 << 20;
const ID = /^[0-9a-f]{16}$/;

/** A paused sandbox as a server recorded it. */
export interface PausedRecord extends ServerRecord {
  /** The name its saved state is resumed by (Sandbox.resume). */
  paused: string;
  /** The server holding it; absent once that one let it go (a close with outlive). */
  holder?: ProcessStamp;
}

const dir = () => path.join(cacheDir(), "server-paused");
const file = (id: string) => path.join(dir(), `${id}.json`);

/** Writes the record of the paused sandbox `record.id`, held by this process unless `letGo`. */
export function writePausedRecord(record: Omit<PausedRecord, "holder">, letGo = false): void {
  mkdirSync(dir(), { recursive: true, mode: 0o700 });
  const full: PausedRecord = { ...record, ...(letGo ? {} : { holder: ownStamp() }) };
  const tmp = `${file(record.id)}.${process.pid}.tmp`;
  // Private: it holds the sandbox's access token.
  writeFileSync(tmp, `${JSON.stringify(full)}\n`, { mode: 0o600 });
  renameSync(tmp, file(record.id));
}

export function removePausedRecord(id: string): void {
  rmSync(file(id), { force: true });
}

function parse(text: string): PausedRecord | undefined {
  try {
    const r = JSON.parse(text) as PausedRecord;
    if (r?.server !== 1 || typeof r.id !== "string" || !ID.test(r.id) || !Number.isSafeInteger(r.memory) || r.memory <= 0) return undefined;
    checkName(r.paused); // a name, not a path: it is removed with its sandbox
    if (r.holder !== undefined && !parseStamp(r.holder)) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

/**
 * Takes over the records of paused sandboxes no live server holds, `limit` at most: each returned
 * is held by this process, on disk too. `damaged` gets the ids of files that are no record, which
 * are removed. Each is judged and taken under its record's lock, so of two servers starting at
 * once one takes it and the other finds it held.
 */
export async function claimPausedRecords(limit: number, damaged: (id: string) => void): Promise<PausedRecord[]> {
  let names: string[];
  try {
    names = readdirSync(dir());
  } catch {
    return [];
  }
  const claimed: PausedRecord[] = [];
  for (const name of names) {
    if (claimed.length >= limit) break;
    const id = name.slice(0, -".json".length);
    if (!name.endsWith(".json") || !ID.test(id)) continue; // a writer's temp file, a lock, or not ours
    await withLock(file(id), async () => {
      let text: string;
      try {
        text = readFileSync(file(id), "utf8");
      } catch {
        return; // killed meanwhile
      }
      const r = text.length <= MAX_RECORD_BYTES ? parse(text) : undefined;
      if (!r || r.id !== id) {
        rmSync(file(id), { force: true });
        damaged(id);
        return;
      }
      const holder = r.holder && parseStamp(r.holder);
      if (holder && alive(holder)) return; // a running server's
      const { holder: _, ...record } = r;
      writePausedRecord(record); // this process's from now on
      claimed.push(record);
    });
  }
  return claimed;
}

/**
 * Removes the saved state of server sandboxes with no record (a server died between the pause and
 * its record): at once when the sandbox `running` here (its paused state is stale, and would
 * refuse its next pause), else once it is older than any pause still being recorded.
 */
export async function sweepUnrecorded(running: (id: string) => boolean): Promise<void> {
  let names: string[];
  try {
    names = readdirSync(pausedRoot());
  } catch {
    return;
  }
  for (const name of names) {
    const id = SERVER_NAME.exec(name)?.[1];
    if (!id) continue;
    await withPausedLock(name, async () => {
      if (existsSync(file(id))) return;
      const dir = pausedDir(name);
      const age = Date.now() - (statSync(dir, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (running(id) || age > UNRECORDED_MS) rmSync(dir, { recursive: true, force: true });
    });
  }
}
