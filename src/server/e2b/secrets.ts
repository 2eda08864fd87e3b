// E2B's /secrets: values stored per API key (owner), write-only. No answer carries a value: a
// secret is used only by a sandbox's network rules, whose `${e2b.secrets.NAME}` placeholders the
// server resolves into the headers the egress proxy injects (network.ts). Kept in the cache, a
// private file per key, so a restarted server (and the sandboxes it adopts) still has them; read
// from it at each use and changed under its lock, so two servers on one cache see one set.
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";

import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import { withLock } from "../../lock.js";
import { cacheDir } from "../../paths.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { ConflictError, NotFoundError } from "../errors.js";
import { type Handler, type Params, readJsonObject, sendJson } from "../http.js";

interface StoredSecret {
  secretID: string;
  name: string;
  value: string;
  version: number;
  metadata: Record<string, string>;
  createdAt: string;
  updatedAt: string;
}

const FORMAT = 1;
// An owner id (auth.ts): a key's digest prefix, or "anonymous".
const OWNER = /^([0-9a-f]{12}|anonymous)$/;

const MAX_VALUE_BYTES = 64 * 1024;
const MAX_NAME = 256;
const MAX_PER_OWNER = 1000;
// Injected into HTTP headers: tab, printable ASCII and Latin-1, as Node's http writes them.
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const BAD_NAME = /[{}\p{Cc}]/u;

/** What a route answers for a secret: never its value. */
const view = (s: StoredSecret) => ({
  secretID: s.secretID,
  name: s.name,
  currentVersion: s.version,
  metadata: s.metadata,
  createdAt: s.createdAt,
  updatedAt: s.updatedAt,
});

export class SecretStore {
  constructor(private readonly dir = path.join(cacheDir(), "e2b-secrets")) {}

  /** The owner's secret by id or name, or NotFoundError. */
  get(owner: string, ref: string): StoredSecret {
    const found = this.list(owner).find((s) => s.secretID === ref || s.name === ref.toLowerCase());
    if (!found) throw new NotFoundError(`secret ${JSON.stringify(ref)} not found: Secret.list() names this key's secrets`);
    return found;
  }

  /** The value of the owner's secret `name`, for a network rule's placeholder. */
  value(owner: string, name: string): string {
    const found = this.list(owner).find((s) => s.name === name.toLowerCase());
    if (!found) {
      throw new InvalidArgumentError(`network rule names secret ${JSON.stringify(name)}, which this API key does not have: Secret.create it first`);
    }
    return found.value;
  }

  /** The owner's secrets, by id. */
  list(owner: string): StoredSecret[] {
    let r: { format?: unknown; secrets?: unknown };
    try {
      r = JSON.parse(readFileSync(this.file(owner), "utf8"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw new Error(`the secrets file ${this.file(owner)} cannot be read (${(err as Error).message}): restore or remove it`);
    }
    if (r?.format !== FORMAT || !Array.isArray(r.secrets))
      throw new Error(`the secrets file ${this.file(owner)} is not one this server wrote: restore or remove it`);
    return (r.secrets as StoredSecret[]).sort((a, b) => a.secretID.localeCompare(b.secretID));
  }

  create(owner: string, name: string, value: string, metadata: Record<string, string>): Promise<StoredSecret> {
    return this.change(owner, (mine) => {
      if (mine.some((s) => s.name === name)) throw new ConflictError(`secret ${JSON.stringify(name)} exists: Secret.update it, or pick another name`);
      if (mine.length >= MAX_PER_OWNER) throw new InvalidArgumentError(`this API key has ${mine.length} secrets, the most it may: destroy some first`);
      const now = new Date().toISOString();
      const s: StoredSecret = { secretID: `sec_${randomBytes(10).toString("hex")}`, name, value, version: 1, metadata, createdAt: now, updatedAt: now };
      mine.push(s);
      return s;
    });
  }

  /** Gives the owner's secret `id` a new value (a new version), and new metadata if given. */
  update(owner: string, id: string, value: string, metadata?: Record<string, string>): Promise<StoredSecret> {
    return this.change(owner, (mine) => {
      const s = mine.find((x) => x.secretID === id);
      if (!s) throw new NotFoundError(`secret ${JSON.stringify(id)} not found: Secret.list() names this key's secrets`);
      return Object.assign(s, { value, version: s.version + 1, updatedAt: new Date().toISOString() }, metadata ? { metadata } : {});
    });
  }

  delete(owner: string, id: string): Promise<void> {
    return this.change(owner, (mine) => {
      const i = mine.findIndex((s) => s.secretID === id);
      if (i >= 0) mine.splice(i, 1);
    });
  }

  // Reads the owner's secrets, lets `fn` change them, and writes them back, under the file's lock:
  // another server's change in between is not lost.
  private async change<T>(owner: string, fn: (mine: StoredSecret[]) => T): Promise<T> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    return withLock(this.file(owner), async () => {
      const mine = this.list(owner);
      const result = fn(mine);
      this.save(owner, mine);
      return result;
    });
  }

  private file(owner: string): string {
    if (!OWNER.test(owner)) throw new Error(`owner id ${JSON.stringify(owner)} is not one auth.ts makes`);
    return path.join(this.dir, `${owner}.json`);
  }

  // Private, as the values are: written aside and renamed into place.
  private save(owner: string, secrets: StoredSecret[]): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const file = this.file(owner);
    const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ format: FORMAT, secrets })}\n`, { mode: 0o600 });
    renameSync(tmp, file);
  }
}

function checkName(v: unknown): string {
  if (typeof v !== "string" || !v || v.length > MAX_NAME || BAD_NAME.test(v)) {
    throw new InvalidArgumentError(
      `secret name ${JSON.stringify(v)} is invalid: give 1 to ${MAX_NAME} characters without '{', '}' or control characters (it goes into \${e2b.secrets.NAME})`,
    );
  }
  const name = v.toLowerCase();
  if (name.startsWith("sec_")) throw new InvalidArgumentError(`secret name ${JSON.stringify(v)} is invalid: the sec_ prefix is for secret ids`);
  return name;
}

// The value goes into request headers: the messages say what is wrong with it, never what it is.
function checkValue(v: unknown): string {
  if (typeof v !== "string" || v === "") throw new InvalidArgumentError("secret value must be a non-empty string");
  if (Buffer.byteLength(v) > MAX_VALUE_BYTES)
    throw new InvalidArgumentError(`secret value is ${Buffer.byteLength(v)} bytes; at most ${MAX_VALUE_BYTES} (it travels in an HTTP header)`);
  if (!HEADER_VALUE.test(v)) {
    throw new InvalidArgumentError(
      "secret value contains a line break, a control character or one beyond U+00FF, which an HTTP header cannot carry: encode it (base64) first",
    );
  }
  return v;
}

function checkMetadata(v: unknown): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) throw new InvalidArgumentError("secret metadata must be an object of string values");
  const entries = Object.entries(v);
  const size = entries.reduce((n, [k, x]) => n + Buffer.byteLength(k) + (typeof x === "string" ? Buffer.byteLength(x) : 0), 0);
  const bad = entries.find(([k, x]) => typeof x !== "string" || Buffer.byteLength(k) > 128 || Buffer.byteLength(x) > 1024);
  if (bad) throw new InvalidArgumentError(`secret metadata ${JSON.stringify(bad[0])} is invalid: keys up to 128 bytes, string values up to 1024`);
  if (entries.length > 32 || size > 8192) throw new InvalidArgumentError("secret metadata is too large: at most 32 entries and 8192 bytes");
  return Object.fromEntries(entries) as Record<string, string>;
}

/**
 * The /secrets routes. `updated`: a secret's value changed, so the sandboxes whose rules name it
 * take the new one; `inUse`: the sandboxes whose rules name it, which keep a secret from deletion.
 */
export function secretRoutes(
  store: SecretStore,
  owner: (req: IncomingMessage) => string,
  bodyLimit: number,
  uses: { updated(owner: string, name: string): Promise<void>; inUse(owner: string, name: string): string[] },
) {
  const ref = (p: Params) => p.secretID ?? "";

  function list(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://x");
    const limit = Math.min(Math.max(Number(url.searchParams.get("limit") ?? SERVER_DEFAULTS.e2b.listLimit) || SERVER_DEFAULTS.e2b.listLimit, 1), 1000);
    const after = url.searchParams.get("nextToken");
    const all = store.list(owner(req)).filter((s) => !after || s.secretID > after);
    const page = all.slice(0, limit);
    sendJson(res, 200, page.map(view), all.length > limit ? { "x-next-token": page.at(-1)!.secretID } : {});
  }

  async function create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const who = owner(req);
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("secret option", body, ["name", "value", "metadata"]);
    sendJson(res, 201, view(await store.create(who, checkName(body.name), checkValue(body.value), checkMetadata(body.metadata))));
  }

  async function update(req: IncomingMessage, res: ServerResponse, p: Params): Promise<void> {
    const who = owner(req);
    const s = store.get(who, ref(p));
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("secret update option", body, ["value", "metadata"]); // a name cannot change
    const value = checkValue(body.value);
    const updated = await store.update(who, s.secretID, value, body.metadata !== undefined ? checkMetadata(body.metadata) : undefined);
    await uses.updated(who, updated.name);
    sendJson(res, 200, view(updated));
  }

  async function remove(req: IncomingMessage, res: ServerResponse, p: Params): Promise<void> {
    const who = owner(req);
    const s = store.get(who, ref(p));
    const users = uses.inUse(who, s.name);
    if (users.length) {
      throw new ConflictError(
        `secret ${s.name} is named by the network rules of sandbox ${users.join(", ")}: change them with updateNetwork, or kill it, first`,
      );
    }
    await store.delete(who, s.secretID);
    res.writeHead(204).end();
  }

  return function routes(on: (method: "GET" | "POST" | "DELETE", path: string, handler: Handler) => void): void {
    on("GET", "/secrets", list);
    on("POST", "/secrets", create);
    on("GET", "/secrets/:secretID", (req, res, p) => sendJson(res, 200, view(store.get(owner(req), ref(p)))));
    on("POST", "/secrets/:secretID", update);
    on("DELETE", "/secrets/:secretID", remove);
  };
}
