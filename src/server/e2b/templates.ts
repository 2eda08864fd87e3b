// The E2B template API the SDK's Template builder calls: a build requested (POST /v3/templates),
// its copy steps' files uploaded (GET /templates/:id/files/:hash gives a URL on this server, the
// SDK PUTs a tar to it), started with its steps (POST /v2/templates/:id/builds/:bid), and polled
// (GET .../status with log entries, .../logs); a name's existence (Template.exists), its tags
// (assignTags, removeTags, getTags), and deletion (DELETE /templates/:id, shared with snapshots).
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import { NotFoundError } from "../errors.js";
import { type Handler, type Params, readJsonObject, sendJson } from "../http.js";
import type { E2bSandboxes } from "./shared.js";
import type { SnapshotStore } from "./snapshots.js";
import { LOG_LEVELS, type LogEntry, type LogLevel, type TemplateBuilds } from "./template-builds.js";
import { FILES_HASH } from "./template-files.js";
import { splitName, TAG, type TemplateRecord, type TemplateStore } from "./template-store.js";

const PAGE = 100;
const MAX_PAGE = 1000;

export function templateRoutes(sandboxes: E2bSandboxes, builds: TemplateBuilds, store: TemplateStore, snapshots: SnapshotStore, bodyLimit: number) {
  const build = (req: IncomingMessage, p: Params) => builds.get(sandboxes.owner(req), p.templateID ?? "", p.buildID ?? "");
  const template = (req: IncomingMessage, id: string): TemplateRecord => {
    const r = store.find(sandboxes.owner(req), id);
    if (!r) throw new NotFoundError(`template ${JSON.stringify(id)} not found: Template.build makes one`);
    return r;
  };

  function status(req: IncomingMessage, res: ServerResponse, p: Params): void {
    const b = build(req, p);
    const q = new URL(req.url ?? "/", "http://x").searchParams;
    const offset = count("logsOffset", q.get("logsOffset"), 0);
    const page = atLevel(b.logs, q.get("level")).slice(offset, offset + Math.min(count("limit", q.get("limit"), PAGE), MAX_PAGE));
    sendJson(res, 200, {
      templateID: b.templateID,
      buildID: b.buildID,
      status: b.status,
      logEntries: page,
      logs: page.map(line),
      ...(b.reason ? { reason: b.reason } : {}),
    });
  }

  function logs(req: IncomingMessage, res: ServerResponse, p: Params): void {
    const b = build(req, p);
    const q = new URL(req.url ?? "/", "http://x").searchParams;
    const direction = q.get("direction") ?? "forward";
    if (direction !== "forward" && direction !== "backward")
      throw new InvalidArgumentError(`direction ${JSON.stringify(direction)} is invalid: give forward or backward`);
    const source = q.get("source");
    if (source !== null && source !== "temporary" && source !== "persistent")
      throw new InvalidArgumentError(`source ${JSON.stringify(source)} is invalid: give temporary or persistent`);
    const limit = Math.min(count("limit", q.get("limit"), PAGE), MAX_PAGE);
    const cursor = q.get("cursor") === null ? undefined : count("cursor", q.get("cursor"), 0);
    const all = atLevel(b.logs, q.get("level"));
    const page =
      direction === "forward"
        ? all.filter((e) => cursor === undefined || Date.parse(e.timestamp) >= cursor).slice(0, limit)
        : all
            .filter((e) => cursor === undefined || Date.parse(e.timestamp) <= cursor)
            .slice(-limit)
            .reverse();
    sendJson(res, 200, { logs: page });
  }

  async function start(req: IncomingMessage, res: ServerResponse, p: Params): Promise<void> {
    const b = build(req, p);
    await builds.start(b, await readJsonObject(req, bodyLimit));
    res.writeHead(202, { "content-length": 0 }).end();
  }

  async function assignTags(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("assign tags field", body, ["target", "tags"]);
    if (typeof body.target !== "string") throw new InvalidArgumentError(`target ${JSON.stringify(body.target)} is invalid: give "name:tag"`);
    const { name, tag } = splitName(body.target);
    const r = template(req, name);
    const buildID = r.tags[tag ?? "default"];
    if (!buildID) throw new NotFoundError(`template ${JSON.stringify(name)} has no tag ${JSON.stringify(tag ?? "default")}`);
    const tags = tagsOf(body.tags);
    await store.tag(r, buildID, tags);
    sendJson(res, 201, { buildID, tags });
  }

  async function removeTags(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("remove tags field", body, ["name", "tags"]);
    if (typeof body.name !== "string") throw new InvalidArgumentError(`name ${JSON.stringify(body.name)} is invalid: give the template's name`);
    await store.untag(template(req, body.name), tagsOf(body.tags));
    res.writeHead(204).end();
  }

  // A snapshot (the SDK's deleteSnapshot) or a template (deleting it by name or id).
  async function remove(req: IncomingMessage, res: ServerResponse, p: Params): Promise<void> {
    const owner = sandboxes.owner(req);
    const id = p.templateID ?? "";
    const snapshot = snapshots.find(owner, id);
    const r = snapshot ? undefined : store.find(owner, id);
    if (snapshot) await snapshots.remove(snapshot);
    else if (r) await store.remove(r);
    else throw new NotFoundError(`no snapshot or template ${JSON.stringify(id)}: listSnapshots lists this key's snapshots, Template.exists checks a name`);
    res.writeHead(204).end();
  }

  return (on: (method: "GET" | "POST" | "PUT" | "DELETE", path: string, handler: Handler) => void) => {
    on("POST", "/v3/templates", async (req, res) => sendJson(res, 202, await builds.request(sandboxes.owner(req), await readJsonObject(req, bodyLimit))));
    on("GET", "/templates/:templateID/files/:hash", (req, res, p) =>
      sendJson(res, 201, builds.waiting(sandboxes.owner(req), p.templateID ?? "").files.link(req, p.templateID ?? "", p.hash ?? "")),
    );
    // The SDK's upload carries no API key: the token its link gave allows it.
    on("PUT", "/templates/:templateID/files/:hash", async (req, res, p) => {
      const hash = p.hash ?? "";
      if (!FILES_HASH.test(hash)) throw new NotFoundError(`no upload of files ${JSON.stringify(hash)} was asked for`);
      await builds.uploading(p.templateID ?? "").files.receive(req, hash);
      res.writeHead(200).end();
    });
    on("POST", "/v2/templates/:templateID/builds/:buildID", start);
    on("GET", "/templates/:templateID/builds/:buildID/status", status);
    on("GET", "/templates/:templateID/builds/:buildID/logs", logs);
    on("GET", "/templates/aliases/:alias", (req, res, p) => {
      const r = template(req, p.alias ?? "");
      sendJson(res, 200, { templateID: r.templateID, public: false });
    });
    on("GET", "/templates/:templateID/tags", (req, res, p) => {
      const r = template(req, p.templateID ?? "");
      sendJson(
        res,
        200,
        Object.entries(r.tags).map(([tag, buildID]) => ({ tag, buildID, createdAt: r.builds[buildID]?.createdAt ?? r.createdAt })),
      );
    });
    on("POST", "/templates/tags", assignTags);
    on("DELETE", "/templates/tags", removeTags);
    on("DELETE", "/templates/:templateID", remove);
  };
}

// The entries at `level` or above (all without one).
function atLevel(logs: LogEntry[], level: string | null): LogEntry[] {
  if (level === null) return logs;
  const min = LOG_LEVELS.indexOf(level as LogLevel);
  if (min < 0) throw new InvalidArgumentError(`level ${JSON.stringify(level)} is invalid: give ${LOG_LEVELS.join(", ")}`);
  return logs.filter((e) => LOG_LEVELS.indexOf(e.level) >= min);
}

const line = (e: LogEntry) => `[${e.timestamp}] ${e.level.toUpperCase()} ${e.message}`;

function count(what: string, v: string | null, fallback: number): number {
  if (v === null) return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`${what} ${JSON.stringify(v)} is invalid: give a whole number, 0 or more`);
  return n;
}

function tagsOf(v: unknown): string[] {
  if (!Array.isArray(v) || !v.length || !v.every((t) => typeof t === "string" && TAG.test(t)))
    throw new InvalidArgumentError(`tags ${JSON.stringify(v)} are invalid: give one or more of letters, digits, '.', '_' or '-'`);
  return v as string[];
}
