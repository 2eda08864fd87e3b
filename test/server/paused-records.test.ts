// The server's records of paused sandboxes (src/server/paused.ts), as the next server on a cache
// reads them: private files; one held by a live server is left alone; one let go of, or whose
// holder died, is taken over (and held by the taker on disk); a damaged one, or one naming a path
// instead of a paused sandbox, is removed and reported, never followed.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { ownStamp } from "../../src/liveness.js";
import { claimPausedRecords, type PausedRecord, removePausedRecord, writePausedRecord } from "../../src/server/paused.js";

let root: string;
let saved: string | undefined;
const file = (id: string) => path.join(root, "server-paused", `${id}.json`);

const record = (id: string): Omit<PausedRecord, "holder"> => ({
  server: 1,
  id,
  protocol: "e2b",
  owner: "k",
  namespace: "e2b",
  name: "base",
  kind: "CustomSandbox",
  memory: 256,
  template: "base",
  metadata: {},
  startedAt: new Date().toISOString(),
  paused: `srv-${id}`,
});

beforeAll(() => {
  root = mkdtempSync(path.join(tmpdir(), "msb-paused-records-"));
  saved = process.env.MSB_CACHE_DIR;
  process.env.MSB_CACHE_DIR = root;
});
afterAll(() => {
  if (saved === undefined) delete process.env.MSB_CACHE_DIR;
  else process.env.MSB_CACHE_DIR = saved;
  rmSync(root, { recursive: true, force: true });
});

describe("paused records", () => {
  it("are private, left alone while their server lives, and taken over once it is gone or let go", () => {
    const damaged: string[] = [];
    writePausedRecord(record("00000000000000a1"));
    expect(statSync(file("00000000000000a1")).mode & 0o777).toBe(0o600);
    expect(claimPausedRecords((id) => damaged.push(id))).toEqual([]); // held by this live process

    writePausedRecord(record("00000000000000a2"), true); // let go at a close
    // Held by a process that has exited since.
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid!;
    writeFileSync(file("00000000000000a3"), JSON.stringify({ ...record("00000000000000a3"), holder: { ...ownStamp(), pid: dead } }));
    const claimed = claimPausedRecords((id) => damaged.push(id));
    expect(claimed.map((r) => r.id).sort()).toEqual(["00000000000000a2", "00000000000000a3"]);
    expect(damaged).toEqual([]);
    // The taker holds them, on disk too: a second look finds nothing to take.
    for (const id of ["00000000000000a2", "00000000000000a3"]) expect(JSON.parse(readFileSync(file(id), "utf8")).holder).toEqual(ownStamp());
    expect(claimPausedRecords((id) => damaged.push(id))).toEqual([]);
    for (const id of ["00000000000000a1", "00000000000000a2", "00000000000000a3"]) removePausedRecord(id);
  });

  it("removes and reports a damaged record, and one whose paused name is a path", () => {
    writeFileSync(file("00000000000000b1"), "{ not json");
    writeFileSync(file("00000000000000b2"), JSON.stringify({ ...record("00000000000000b2"), paused: "../../victim" }));
    writeFileSync(file("00000000000000b3"), JSON.stringify(record("00000000000000b4"))); // names another id
    const damaged: string[] = [];
    expect(claimPausedRecords((id) => damaged.push(id))).toEqual([]);
    expect(damaged.sort()).toEqual(["00000000000000b1", "00000000000000b2", "00000000000000b3"]);
    for (const id of ["00000000000000b1", "00000000000000b2", "00000000000000b3"]) expect(existsSync(file(id))).toBe(false);
  });
});
