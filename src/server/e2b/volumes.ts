// E2B volumes (/volumes, and volumeMounts at create) on the library's named volumes: E2B volume
// NAME of the key whose owner id is OWNER is the library volume "e2b.OWNER.NAME" (msb volume ls
// shows it), so each key sees and mounts only its own, and a name is a plain file name. Its id is
// a digest of that library name: nothing is kept but the volumes themselves, which outlive the
// server. The token a volume is given is for its content API (volume-content.ts).
import { createHash, createHmac, randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError, VolumeBusyError } from "../../errors.js";
import { createVolume, listVolumes, removeVolume, type VolumeSpec } from "../../sandbox/volumes.js";
import { ConflictError, NotFoundError } from "../errors.js";
import { type Handler, type Params, readJsonObject, sendJson } from "../http.js";
import { SERVER_NAME } from "../paused.js";
import type { E2bSandboxes } from "./shared.js";

const PREFIX = "e2b.";
// Library names are at most 63 characters: "e2b." and a 12-character owner id and "." leave 46.
const NAME = /^[a-z0-9][a-z0-9_-]{0,45}$/;
const NAME_RULE = "1-46 of a-z, 0-9, '_', '-', starting with a letter or digit";

/** A volume of one owner: its E2B name and id, and the library volume it is. */
export interface E2bVolume {
  name: string;
  volumeID: string;
  library: string;
}

const idOf = (library: string) => createHash("sha256").update(library).digest("hex").slice(0, 20);

/** The owner id a volume belongs to. */
export const ownerOf = (v: E2bVolume): string => v.library.slice(PREFIX.length, -v.name.length - 1);

/** The ids of the sandboxes that have the volume mounted now. */
export function mountedIn(v: E2bVolume): string {
  const users = listVolumes().find((x) => x.name === v.library)?.users ?? [];
  return users.map((u) => SERVER_NAME.exec(u.sandbox)?.[1] ?? u.sandbox).join(", ") || "(one that just stopped)";
}

function checkName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) throw new InvalidArgumentError(`volume name ${JSON.stringify(name)} is invalid: ${NAME_RULE}`);
  return name;
}

/** The E2B volumes: every owner's, each owner's, and the tokens of their content API. */
export class E2bVolumes {
  // Tokens are signed with a secret of this server's run: a restart gives new ones (getInfo tells them).
  private readonly secret = randomBytes(32);
  // Content API helpers on their way down, by library volume: a mount or destroy waits for them.
  private readonly stopping = new Map<string, Promise<void>>();

  /** Records a content API helper of `library` stopping. */
  stopped(library: string, stop: Promise<void>): void {
    this.stopping.set(library, stop);
    void stop.finally(() => this.stopping.get(library) === stop && this.stopping.delete(library));
  }

  /** Resolves when no content API helper of `library` is stopping. */
  async settled(library: string): Promise<void> {
    while (this.stopping.has(library)) await this.stopping.get(library);
  }

  /** Every owner's volumes (the content API, where the token is the check). */
  all(): E2bVolume[] {
    return listVolumes().flatMap(({ name: library }) => {
      if (!library.startsWith(PREFIX)) return [];
      const dot = library.indexOf(".", PREFIX.length);
      return dot < 0 ? [] : [{ name: library.slice(dot + 1), volumeID: idOf(library), library }];
    });
  }

  /** The owner's volumes, by name. */
  of(owner: string): E2bVolume[] {
    return this.all().filter((v) => v.library === `${PREFIX}${owner}.${v.name}`);
  }

  /** The owner's volume `id`, or NotFoundError. */
  byId(owner: string, id: string): E2bVolume {
    const v = this.of(owner).find((x) => x.volumeID === id);
    if (!v) throw new NotFoundError(`volume ${JSON.stringify(id)} not found: Volume.list() lists this key's volumes`);
    return v;
  }

  token(v: E2bVolume): string {
    return createHmac("sha256", this.secret).update(v.library).digest("base64url");
  }

  /**
   * A create's volumeMounts as the library's volumes: each an existing volume of the owner's
   * (E2B mounts only created volumes), at a path the library checks when the sandbox boots.
   */
  async mounts(owner: string, value: unknown): Promise<{ e2b: { name: string; path: string }[]; library: VolumeSpec[] }> {
    if (value === undefined || value === null) return { e2b: [], library: [] };
    if (!Array.isArray(value)) throw new InvalidArgumentError(`volumeMounts must be an array of { name, path }, got ${JSON.stringify(value)}`);
    const mine = this.of(owner);
    const e2b = value.map((m: unknown) => {
      const { name, path, ...rest } = (m && typeof m === "object" ? m : {}) as Record<string, unknown>;
      if (Object.keys(rest).length || typeof path !== "string")
        throw new InvalidArgumentError(`volume mount ${JSON.stringify(m)} is invalid: give { name, path } and nothing else`);
      const known = checkName(name);
      if (!mine.some((v) => v.name === known))
        throw new NotFoundError(`volume ${JSON.stringify(known)} not found: create it first (Volume.create), Volume.list() lists this key's volumes`);
      return { name: known, path };
    });
    const library = e2b.map((m) => ({ name: `${PREFIX}${owner}.${m.name}`, path: m.path }));
    for (const v of library) await this.settled(v.name);
    return { e2b, library };
  }
}

export function volumeRoutes(volumes: E2bVolumes, sandboxes: E2bSandboxes, bodyLimit: number) {
  const andToken = (v: E2bVolume) => ({ volumeID: v.volumeID, name: v.name, token: volumes.token(v) });

  async function create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const owner = sandboxes.owner(req);
    const { name, ...rest } = await readJsonObject(req, bodyLimit);
    if (Object.keys(rest).length) throw new InvalidArgumentError(`unknown volume field ${Object.keys(rest).join(", ")}: give only { name }`);
    const library = `${PREFIX}${owner}.${checkName(name)}`;
    if (!(await createVolume(library))) throw new ConflictError(`volume ${JSON.stringify(name)} already exists: use it, or destroy it first`);
    sendJson(res, 201, andToken({ name: name as string, volumeID: idOf(library), library }));
  }

  async function destroy(req: IncomingMessage, res: ServerResponse, params: Params): Promise<void> {
    const v = volumes.byId(sandboxes.owner(req), params.volumeID ?? "");
    await volumes.settled(v.library);
    try {
      await removeVolume(v.library);
    } catch (err) {
      if (!(err instanceof VolumeBusyError)) throw err;
      throw new VolumeBusyError(`volume ${v.name} is mounted in sandbox ${mountedIn(v)}: kill it first, then destroy the volume`);
    }
    res.writeHead(204).end();
  }

  return function routes(on: (method: "GET" | "POST" | "DELETE", path: string, handler: Handler) => void): void {
    on("POST", "/volumes", create);
    on("GET", "/volumes", (req, res) =>
      sendJson(
        res,
        200,
        volumes.of(sandboxes.owner(req)).map((v) => ({ volumeID: v.volumeID, name: v.name })),
      ),
    );
    on("GET", "/volumes/:volumeID", (req, res, p) => sendJson(res, 200, andToken(volumes.byId(sandboxes.owner(req), p.volumeID ?? ""))));
    on("DELETE", "/volumes/:volumeID", destroy);
  };
}
