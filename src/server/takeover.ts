// Taking over what a previous msb server on this cache left: its running sandboxes (outliving VMs
// whose state file carries a ServerRecord) and its paused ones (records beside their saved state,
// paused.ts), each with its id, owner, metadata and what is left of its timeout; and stopping,
// with the reason, what cannot be taken over.
import { rmSync } from "node:fs";

import { pausedDir, readPaused } from "../sandbox/paused.js";
import { Sandbox } from "../sandbox/sandbox.js";
import { SANDBOX_KINDS } from "./catalog.js";
import { claimPausedRecords, type PausedRecord, removePausedRecord, SERVER_NAME, sweepUnrecorded } from "./paused.js";
import type { Managed, SandboxTable, ServerRecord } from "./sandboxes.js";

/** What takeOver() did with the sandboxes a previous server left running or paused. */
export interface Adoption {
  adopted: string[];
  /** Paused ones taken over: they wait for a resume here. */
  paused: string[];
  stopped: { id: string; why: string }[];
}

/** Gives a sandbox taken over its protocol's state back, from what its server recorded (`extra`). */
export type Restore = (m: Managed, extra: unknown) => Promise<void>;

/** The sandbox a previous server recorded as `r`, now `sandbox` here. */
function managedOf(r: ServerRecord, sandbox: Sandbox): Managed {
  return {
    id: r.id,
    protocol: r.protocol,
    owner: r.owner,
    namespace: r.namespace,
    name: r.name,
    sandbox,
    kind: r.kind,
    memory: r.memory,
    template: r.template,
    metadata: r.metadata ?? {},
    startedAt: new Date(r.startedAt),
  };
}

/**
 * Takes over the sandboxes a server on this cache left running (Sandbox.orphans() with a
 * ServerRecord) or paused (its paused records): each keeps its id, owner, metadata and what is
 * left of its timeout; `restore` gives it back its protocol's state. One whose timeout passed
 * meanwhile, or that cannot be taken over, is stopped (a paused one: its saved state removed),
 * and said why.
 */
export async function takeOver(table: SandboxTable, restore: Restore): Promise<Adoption> {
  const done: Adoption = { adopted: [], paused: [], stopped: [] };
  for (const orphan of Sandbox.orphans()) {
    const r = orphan.data as ServerRecord | undefined;
    if (r?.server !== 1) {
      // A server's own that it died before recording (between its start and its record): stopped.
      const id = SERVER_NAME.exec(orphan.name)?.[1];
      if (id) {
        Sandbox.discard(orphan);
        done.stopped.push({ id, why: "its server ended before recording it" });
      }
      continue; // else a library user's own
    }
    if (typeof r.id !== "string" || !Object.hasOwn(SANDBOX_KINDS, r.kind)) {
      Sandbox.discard(orphan);
      done.stopped.push({ id: String(r.id), why: `its record names no sandbox this server makes (kind ${JSON.stringify(r.kind)})` });
      continue;
    }
    if (r.endAt !== undefined && r.endAt <= Date.now()) {
      Sandbox.discard(orphan);
      done.stopped.push({ id: r.id, why: `its timeout passed at ${new Date(r.endAt).toISOString()} while no server ran` });
      continue;
    }
    try {
      const m = managedOf(r, await SANDBOX_KINDS[r.kind].adopt(orphan));
      table.insert(m);
      await restore(m, r.extra);
      if (r.endAt !== undefined) table.setEndAt(m, r.endAt);
      else table.persist(m);
      done.adopted.push(m.id);
    } catch (err) {
      const m = table.byId(r.id);
      if (m) await table.kill(m);
      done.stopped.push({ id: r.id, why: (err as Error).message });
    }
  }
  // Paused ones within maxPaused: the rest wait on disk for a server with room.
  for (const r of await claimPausedRecords(table.pausedRoom(), (id) => done.stopped.push({ id, why: "its paused record is damaged" }))) {
    const forget = () => {
      removePausedRecord(r.id);
      rmSync(pausedDir(r.paused), { recursive: true, force: true });
    };
    // Resumed just before its server ended: the running one was adopted above, this is stale.
    if (table.byId(r.id)) {
      forget();
      continue;
    }
    try {
      await adoptPaused(table, r, restore);
      done.paused.push(r.id);
    } catch (err) {
      const m = table.byId(r.id);
      if (m) await table.kill(m);
      else forget();
      done.stopped.push({ id: r.id, why: (err as Error).message });
    }
  }
  await sweepUnrecorded((id) => !!table.byId(id));
  return done;
}

// A paused sandbox a previous server recorded, as it left it: a sandbox of its kind that is not
// running, its saved state removed when it is killed.
async function adoptPaused(table: SandboxTable, r: PausedRecord, restore: Restore): Promise<void> {
  if (!Object.hasOwn(SANDBOX_KINDS, r.kind)) throw new Error(`its record names no sandbox this server makes (kind ${JSON.stringify(r.kind)})`);
  const { meta } = readPaused(r.paused, r.kind);
  const m: Managed = {
    ...managedOf(r, new SANDBOX_KINDS[r.kind](meta.options)),
    paused: true,
    discard: () => rmSync(pausedDir(r.paused), { recursive: true, force: true }),
  };
  table.insert(m);
  await restore(m, r.extra);
  table.persist(m);
}
