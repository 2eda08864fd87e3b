// The server's records of paused sandboxes (src/server/paused.ts), as the next server on a cache
// reads them: private files; one held by a live server is left alone; one let go of, or whose
// holder died, is taken over (and held by the taker on disk), within the room given; a damaged
// one, or one naming a path instead of a paused sandbox, is removed and reported, never followed;
// saved state a server left without a record is swept.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { ownStamp } from "../../src/liveness.js";
import { claimPausedRecords, type PausedRecord, removePausedRecord, sweepUnrecorded, writePausedRecord } from "../../src/server/paused.js";

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
  it("are private, left alone while their server lives, and taken over once it is gone or let go", async () => {
    const damaged: string[] = [];
    writePausedRecord(record("00000000000000a1"));
    expect(statSync(file("00000000000000a1")).mode & 0o777).toBe(0o600);
    expect(await claimPausedRecords(10, (id) => damaged.push(id))).toEqual([]); // held by this live process

    writePausedRecord(record("00000000000000a2"), true); // let go at a close
    // Held by a process that has exited since.
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid!;
    writeFileSync(file("00000000000000a3"), JSON.stringify({ ...record("00000000000000a3"), holder: { ...ownStamp(), pid: dead } }));
    const claimed = await claimPausedRecords(10, (id) => damaged.push(id));
    expect(claimed.map((r) => r.id).sort()).toEqual(["00000000000000a2", "00000000000000a3"]);
    expect(damaged).toEqual([]);
    // The taker holds them, on disk too: a second look finds nothing to take.
    for (const id of ["00000000000000a2", "00000000000000a3"]) expect(JSON.parse(readFileSync(file(id), "utf8")).holder).toEqual(ownStamp());
    expect(await claimPausedRecords(10, (id) => damaged.push(id))).toEqual([]);
    for (const id of ["00000000000000a1", "00000000000000a2", "00000000000000a3"]) removePausedRecord(id);
  });

  it("takes no more than it is given room for; two takers at once take each record once", async () => {
    for (const id of ["00000000000000c1", "00000000000000c2", "00000000000000c3"]) writePausedRecord(record(id), true);
    const first = await claimPausedRecords(1, () => {});
    expect(first).toHaveLength(1);
    const [a, b] = await Promise.all([claimPausedRecords(10, () => {}), claimPausedRecords(10, () => {})]);
    const rest = [...a!, ...b!];
    expect([...first, ...rest].map((r) => r.id).sort()).toEqual(["00000000000000c1", "00000000000000c2", "00000000000000c3"]);
    for (const id of ["00000000000000c1", "00000000000000c2", "00000000000000c3"]) removePausedRecord(id);
  });

  it("sweeps a server sandbox's saved state that has no record: at once when it runs, else once it is old", async () => {
    const saved = (id: string) => path.join(root, "paused", `srv-${id}`);
    for (const id of ["00000000000000d1", "00000000000000d2", "00000000000000d3", "00000000000000d4"]) mkdirSync(saved(id), { recursive: true });
    mkdirSync(path.join(root, "paused", "mine"), { recursive: true }); // a library user's: never the server's to sweep
    writePausedRecord(record("00000000000000d3")); // recorded: kept
    const old = new Date(Date.now() - 3600_000);
    utimesSync(saved("00000000000000d2"), old, old);
    await sweepUnrecorded((id) => id === "00000000000000d1");
    expect(["00000000000000d1", "00000000000000d2", "00000000000000d3", "00000000000000d4"].map((id) => existsSync(saved(id)))).toEqual([
      false,
      false,
      true,
      true,
    ]);
    expect(existsSync(path.join(root, "paused", "mine"))).toBe(true);
    removePausedRecord("00000000000000d3");
  });

  it("removes and reports a damaged record, and one whose paused name is a path", async () => {
    writeFileSync(file("00000000000000b1"), "{ not json");
    writeFileSync(file("00000000000000b2"), JSON.stringify({ ...record("00000000000000b2"), paused: "../../victim" }));
    writeFileSync(file("00000000000000b3"), JSON.stringify(record("00000000000000b4"))); // names another id
    const damaged: string[] = [];
    expect(await claimPausedRecords(10, (id) => damaged.push(id))).toEqual([]);
    expect(damaged.sort()).toEqual(["00000000000000b1", "00000000000000b2", "00000000000000b3"]);
    for (const id of ["00000000000000b1", "00000000000000b2", "00000000000000b3"]) expect(existsSync(file(id))).toBe(false);
  });
});
