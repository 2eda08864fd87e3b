// The server's record of each paused sandbox, kept in the cache beside the library's paused state
// (src/sandbox/paused.ts), so that a server restarted on the same cache still has them: who owns
// each, its token, metadata and protocol state, and which server holds it now. A record whose
// holder is gone (SIGKILLed, or let go at a close with outlive) is taken over by the next server
// to start; two starting at once do not both take one (the one whose rename wins has it).
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";

import { alive, ownStamp, type ProcessStamp, parseStamp } from "../liveness.js";
import { cacheDir } from "../paths.js";
import { checkName } from "../sandbox/options.js";
import type { ServerRecord } from "./sandboxes.js";

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
    if (r?.server !== 1 || typeof r.id !== "string" || !ID.test(r.id)) return undefined;
    checkName(r.paused); // a name, not a path: it is removed with its sandbox
    if (r.holder !== undefined && !parseStamp(r.holder)) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

/**
 * Takes over the records of paused sandboxes no live server holds: each returned is held by this
 * process, on disk too. `damaged` gets the ids of files that are no record, which are removed.
 */
export function claimPausedRecords(damaged: (id: string) => void): PausedRecord[] {
  let names: string[];
  try {
    names = readdirSync(dir());
  } catch {
    return [];
  }
  const claimed: PausedRecord[] = [];
  for (const name of names) {
    const id = name.slice(0, -".json".length);
    if (!name.endsWith(".json") || !ID.test(id)) continue; // a writer's temp file, or not ours
    const from = file(id);
    let text: string;
    try {
      text = readFileSync(from, "utf8");
    } catch {
      continue; // taken meanwhile
    }
    const r = text.length <= MAX_RECORD_BYTES ? parse(text) : undefined;
    if (!r || r.id !== id) {
      rmSync(from, { force: true });
      damaged(id);
      continue;
    }
    const holder = r.holder && parseStamp(r.holder);
    if (holder && alive(holder)) continue; // a running server's
    // The claim: of two servers renaming one file, one succeeds.
    const claim = `${from}.claimed-${process.pid}`;
    try {
      renameSync(from, claim);
    } catch {
      continue;
    }
    const now = parse(readFileSync(claim, "utf8"));
    const taken = now?.holder && parseStamp(now.holder);
    if (now && taken && alive(taken)) {
      renameSync(claim, from); // another server took it over between the read and the rename
      continue;
    }
    if (now) {
      const { holder: _, ...record } = now;
      writePausedRecord(record); // this process's from now on, on disk before the claim goes
      claimed.push(record);
    }
    rmSync(claim, { force: true });
  }
  return claimed;
}
