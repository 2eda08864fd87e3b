// E2B snapshots: a running sandbox saved as it is (memory, processes, files; it runs on), kept in
// the cache beyond the sandbox and the server process, and seen and used only by the key that made
// it. POST /sandboxes/:id/snapshots takes one, GET /snapshots lists them, DELETE /templates/:id
// (the SDK's deleteSnapshot, served with templates.ts's) removes one, and a create whose templateID names one starts a sandbox
// from it, as many times as asked (the library's save() and resume(name, { as })).
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";

import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import { cacheDir } from "../../paths.js";
import { pausedDir, withPausedLock } from "../../sandbox/paused.js";
import { SANDBOX_KINDS, type SandboxKind } from "../catalog.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { ConflictError, NotFoundError } from "../errors.js";
import { type Handler, type Params, readJsonObject, sendJson } from "../http.js";
import type { CreateSpec } from "../sandboxes.js";
import { type ContextRecords, contextRecords } from "./interpreter.js";
import type { E2bNetwork } from "./network.js";
import { type E2bSandbox, type E2bSandboxes, settled } from "./shared.js";

const FORMAT = 1;
const TAG = ":default";
// What an unnamed snapshot's id looks like: a create naming one that is gone is told so, not sent to a registry.
const UNNAMED = /^snapshot-[0-9a-f]{16}(:default)?$/;
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/i;

interface SnapshotRecord {
  format: number;
  snapshotID: string;
  names: string[];
  /** The owner id of the key that took it: no other key sees or uses it. */
  owner: string;
  /** The sandbox it was taken from. */
  sandboxID: string;
  /** The library's saved sandbox it starts from. */
  saved: string;
  kind: SandboxKind;
  memory: number;
  /** Its E2B network as the source had it (the library's policy is saved with the sandbox). */
  network: E2bNetwork;
  /** Its code contexts, whose interpreters the saved sandbox carries. */
  contexts?: ContextRecords;
  createdAt: string;
}

/** The saved sandbox's name take() gives a snapshot. */
const SAVED = /^e2b-snapshot-[0-9a-f]+$/;

// Whether `r` is called `id`: its id or a name, with or without the tag.
function called(r: SnapshotRecord, id: string): boolean {
  const tagged = id.endsWith(TAG) ? id : `${id}${TAG}`;
  return r.snapshotID === tagged || r.names.includes(tagged);
}

export class SnapshotStore {
  constructor(private readonly dir = path.join(cacheDir(), "e2b-snapshots")) {}

  /** The snapshots `owner` took, by id. */
  list(owner: string): SnapshotRecord[] {
    let files: string[];
    try {
      files = readdirSync(this.dir).filter((f) => f.endsWith(".json"));
    } catch {
      return [];
    }
    return files
      .flatMap((f) => {
        try {
          const r = JSON.parse(readFileSync(path.join(this.dir, f), "utf8")) as SnapshotRecord;
          // `saved` names a directory this removes: only the names take() makes are taken.
          return r.format === FORMAT && r.owner === owner && Object.hasOwn(SANDBOX_KINDS, r.kind) && SAVED.test(r.saved) ? [r] : [];
        } catch {
          return []; // half written by a process that died, or not ours
        }
      })
      .sort((a, b) => a.snapshotID.localeCompare(b.snapshotID) || a.createdAt.localeCompare(b.createdAt));
  }

  /** `owner`'s snapshot called `id` (its id or a name, with or without the tag), if any. */
  find(owner: string, id: string): SnapshotRecord | undefined {
    return this.list(owner).find((r) => called(r, id));
  }

  /**
   * What a create from the snapshot `id` of `owner` starts, and the E2B network it has, or
   * undefined when `id` names none (a template); NotFoundError for an id of the snapshots' own
   * form that is gone.
   */
  spec(
    owner: string,
    id: string,
  ): { create: { kind: SandboxKind; memory: number; start: NonNullable<CreateSpec["start"]> }; network: E2bNetwork; contexts?: ContextRecords } | undefined {
    const r = this.find(owner, id);
    if (!r) {
      if (UNNAMED.test(id))
        throw new NotFoundError(`snapshot ${JSON.stringify(id)} not found: it was deleted, or another key took it (listSnapshots lists yours)`);
      return undefined;
    }
    return {
      create: { kind: r.kind, memory: r.memory, start: (name) => SANDBOX_KINDS[r.kind].resume(r.saved, { as: name }) },
      network: r.network,
      ...(r.contexts ? { contexts: r.contexts } : {}),
    };
  }

  /** Saves `sb` as `owner`'s snapshot, under `name` if given (replacing `owner`'s older one of that name). */
  async take(owner: string, { m, s }: E2bSandbox, name: string | undefined): Promise<SnapshotRecord> {
    await settled(s);
    if (s.paused) throw new ConflictError(`sandbox ${m.id} is paused: connect to it first, then take the snapshot`);
    const hex = randomBytes(8).toString("hex");
    const snapshotID = `${name ?? `snapshot-${hex}`}${TAG}`;
    const older = name === undefined ? undefined : this.find(owner, snapshotID);
    const saved = `e2b-snapshot-${hex}`;
    await m.sandbox.save(saved);
    const r: SnapshotRecord = {
      format: FORMAT,
      snapshotID,
      names: [snapshotID],
      owner,
      sandboxID: m.id,
      saved,
      kind: m.kind,
      memory: m.memory,
      network: s.network,
      contexts: contextRecords(s),
      createdAt: new Date().toISOString(),
    };
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      const file = this.file(r);
      writeFileSync(`${file}.tmp`, `${JSON.stringify(r, null, 2)}\n`, { mode: 0o600 });
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      rmSync(pausedDir(saved), { recursive: true, force: true });
      throw err;
    }
    if (older) await this.remove(older);
    return r;
  }

  /** Removes the snapshot: no create finds it from now on, and its saved state goes once no create reads it. */
  async remove(r: SnapshotRecord): Promise<void> {
    rmSync(this.file(r), { force: true });
    await withPausedLock(r.saved, async () => rmSync(pausedDir(r.saved), { recursive: true, force: true }));
  }

  private file(r: SnapshotRecord): string {
    return path.join(this.dir, `${r.saved}.json`);
  }
}

const TAKE_KEYS = ["name"] as const;

/** The snapshot routes, given to `on` as control.ts gives its own. */
export function snapshotRoutes(sandboxes: E2bSandboxes, store: SnapshotStore, bodyLimit: number) {
  const info = (r: SnapshotRecord) => ({ snapshotID: r.snapshotID, names: r.names });

  async function take(req: IncomingMessage, res: ServerResponse, params: Params): Promise<void> {
    const sb = sandboxes.owned(req, params.sandboxID ?? "");
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("snapshot option", body, TAKE_KEYS);
    if (body.name !== undefined && !(typeof body.name === "string" && NAME.test(body.name)))
      throw new InvalidArgumentError(`snapshot name ${JSON.stringify(body.name)} is invalid: give letters, digits, '.', '_' or '-' (at most 63)`);
    sendJson(res, 201, info(await store.take(sandboxes.owner(req), sb, body.name)));
  }

  function list(req: IncomingMessage, res: ServerResponse): void {
    const q = new URL(req.url ?? "/", "http://x").searchParams;
    const limit = Math.min(Math.max(Number(q.get("limit") ?? SERVER_DEFAULTS.e2b.listLimit) || SERVER_DEFAULTS.e2b.listLimit, 1), 1000);
    const from = q.get("sandboxID");
    const name = q.get("name");
    let all = store.list(sandboxes.owner(req)).filter((r) => (!from || r.sandboxID === from) && (!name || called(r, name)));
    const after = q.get("nextToken");
    if (after) all = all.filter((r) => r.snapshotID > after);
    const page = all.slice(0, limit);
    sendJson(res, 200, page.map(info), all.length > limit ? { "x-next-token": page.at(-1)!.snapshotID } : {});
  }

  return (on: (method: "GET" | "POST" | "DELETE", path: string, handler: Handler) => void) => {
    on("POST", "/sandboxes/:sandboxID/snapshots", take);
    on("GET", "/snapshots", list);
  };
}
