// The E2B control plane (E2B_API_URL, X-API-KEY): sandboxes created (from a template or a
// snapshot), connected to (which resumes a paused one), listed, described, killed, given a new
// timeout, paused (pausing.ts), forked (fork.ts), snapshotted (snapshots.ts), and measured.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import type { ImageCatalog } from "../catalog.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { ConflictError } from "../errors.js";
import { type Handler, type Params, readJsonObject, sendJson } from "../http.js";
import { recordE2b } from "./adoption.js";
import { forkRoute } from "./fork.js";
import { linkContexts } from "./interpreter.js";
import { checkE2bNetwork, type E2bNetworks, networkInfo } from "./network.js";
import { metricOf } from "./observe.js";
import { armLifecycle, flag, lifecycleOf, pauseSandbox, resumeSandbox } from "./pausing.js";
import { type E2bSandbox, type E2bSandboxes, ENVD_VERSION, settled } from "./shared.js";
import { type SnapshotStore, snapshotRoutes } from "./snapshots.js";
import { runStartCommands } from "./template-start.js";
import type { TemplateStore } from "./template-store.js";
import type { E2bVolumes } from "./volumes.js";

export function controlPlane(
  sandboxes: E2bSandboxes,
  catalog: ImageCatalog,
  bodyLimit: number,
  volumes: E2bVolumes,
  networks: E2bNetworks,
  snapshots: SnapshotStore,
  templates: TemplateStore,
) {
  const { table } = sandboxes;
  const target = (req: IncomingMessage, params: Params) => sandboxes.owned(req, params.sandboxID ?? "");

  const info = ({ m, s }: E2bSandbox) => ({
    sandboxID: m.id,
    templateID: m.template,
    alias: m.template,
    clientID: "msb",
    startedAt: m.startedAt.toISOString(),
    endAt: new Date(m.endAt ?? Date.now()).toISOString(),
    cpuCount: 1,
    memoryMB: m.memory,
    diskSizeMB: 0,
    metadata: m.metadata,
    state: s.paused ? "paused" : "running",
    envdVersion: ENVD_VERSION,
    volumeMounts: s.volumeMounts ?? [],
    lifecycle: { onTimeout: s.lifecycle.onTimeout, autoResume: s.lifecycle.autoResume },
  });

  // What create and connect answer: how the SDK reaches the sandbox.
  const reached = ({ m, s }: E2bSandbox) => ({
    sandboxID: m.id,
    templateID: m.template,
    alias: m.template,
    clientID: "msb",
    envdVersion: ENVD_VERSION,
    envdAccessToken: s.token,
    trafficAccessToken: s.token,
    domain: null,
  });

  async function create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const who = sandboxes.owner(req);
    const body = await readJsonObject(req, bodyLimit);
    const template = typeof body.templateID === "string" && body.templateID ? body.templateID : SERVER_DEFAULTS.e2b.template;
    const timeout = typeof body.timeout === "number" && body.timeout > 0 ? body.timeout : SERVER_DEFAULTS.e2b.timeoutS;
    const metadata = body.metadata && typeof body.metadata === "object" ? (body.metadata as Record<string, string>) : {};
    const env = body.envVars && typeof body.envVars === "object" ? (body.envVars as Record<string, string>) : {};
    const network = checkE2bNetwork(body.network, body.allow_internet_access);
    const networkOptions = networks.library(who, network);
    const mounts = await volumes.mounts(who, body.volumeMounts);
    const lifecycle = lifecycleOf(body, timeout);
    // A snapshot of the caller's starts as it was saved, its environment and network included; else
    // a template the caller built, else one of the server's.
    const snapshot = snapshots.spec(who, template);
    const built = snapshot ? undefined : templates.entry(who, template);
    // A snapshot whose rules name a secret this key no longer has is refused before it starts.
    if (snapshot) networks.library(who, snapshot.network);
    if (snapshot && (Object.keys(env).length || mounts.library.length || body.network !== undefined || body.allow_internet_access !== undefined)) {
      throw new InvalidArgumentError(
        `template ${JSON.stringify(template)} is a snapshot, whose environment and network were saved with it (and which has no volumes): create it without envs, network or volumeMounts`,
      );
    }
    const m = await table.create({
      protocol: "e2b",
      owner: who,
      namespace: "e2b",
      name: template,
      ...(snapshot?.create ?? (built ? { image: built.image, kind: built.kind } : catalog.template(template))),
      template,
      metadata,
      env,
      volumes: mounts.library,
      timeout,
      ...networkOptions,
    });
    const s = sandboxes.add(m, randomBytes(24).toString("base64url"), snapshot?.network ?? network, lifecycle);
    if (snapshot) linkContexts(s, m.sandbox, snapshot.contexts);
    try {
      if (snapshot) await networks.refresh({ m, s });
      if (built) await runStartCommands({ m, s }, built);
    } catch (err) {
      await table.kill(m);
      throw err;
    }
    armLifecycle(table, { m, s });
    if (mounts.e2b.length) s.volumeMounts = mounts.e2b;
    recordE2b(table, m, s);
    sendJson(res, 201, reached({ m, s }));
  }

  async function connect(req: IncomingMessage, res: ServerResponse, params: Params): Promise<void> {
    const sb = target(req, params);
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("connect option", body, ["timeout", "memory"]);
    if (body.timeout !== undefined && !(typeof body.timeout === "number" && body.timeout > 0))
      throw new InvalidArgumentError(`timeout ${JSON.stringify(body.timeout)} is invalid: give a positive number of seconds`);
    const timeout = (body.timeout as number | undefined) ?? SERVER_DEFAULTS.e2b.timeoutS;
    const resumed = await resumeSandbox(table, sb, timeout, flag("memory", body.memory) ?? true);
    if (resumed) await networks.refresh(sb);
    sendJson(res, resumed ? 201 : 200, reached(sb));
  }

  function list(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://x");
    const wanted = new URLSearchParams(url.searchParams.get("metadata") ?? "");
    const states = url.searchParams.getAll("state").flatMap((s) => s.split(","));
    const limit = Math.min(Math.max(Number(url.searchParams.get("limit") ?? SERVER_DEFAULTS.e2b.listLimit) || SERVER_DEFAULTS.e2b.listLimit, 1), 1000);
    const after = url.searchParams.get("nextToken");
    let all = sandboxes
      .list(req)
      .filter(({ m }) => [...wanted].every(([k, v]) => m.metadata[k] === v))
      .map(info)
      .filter((i) => !states.length || states.includes(i.state))
      .sort((a, b) => a.sandboxID.localeCompare(b.sandboxID));
    if (after) all = all.filter((i) => i.sandboxID > after);
    const page = all.slice(0, limit);
    sendJson(res, 200, page, all.length > limit ? { "x-next-token": page.at(-1)!.sandboxID } : {});
  }

  async function metrics(req: IncomingMessage, res: ServerResponse, params: Params): Promise<void> {
    const { m } = target(req, params);
    sendJson(res, 200, [metricOf(await m.sandbox.metrics())]);
  }

  async function pause(req: IncomingMessage, res: ServerResponse, params: Params): Promise<void> {
    const sb = target(req, params);
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("pause option", body, ["memory"]);
    await pauseSandbox(table, sb, flag("memory", body.memory) ?? true);
    res.writeHead(204).end();
  }

  /** Gives each of the control plane's routes to `on`, which serves it (and answers its errors). */
  return function routes(on: (method: "GET" | "POST" | "DELETE", path: string, handler: Handler) => void): void {
    on("POST", "/sandboxes", create);
    on("POST", "/v2/sandboxes", create);
    on("GET", "/sandboxes", list);
    on("GET", "/v2/sandboxes", list);
    on("GET", "/sandboxes/:sandboxID", (req, res, p) => {
      const sb = target(req, p);
      sendJson(res, 200, { ...info(sb), ...networkInfo(sb.s.network), envdAccessToken: sb.s.token });
    });
    on("DELETE", "/sandboxes/:sandboxID", async (req, res, p) => {
      const { m, s } = target(req, p);
      await settled(s); // a pause or resume under way ends first, so nothing it makes outlives the kill
      await table.kill(m);
      res.writeHead(204).end();
    });
    on("POST", "/sandboxes/:sandboxID/timeout", async (req, res, p) => {
      const { m, s } = target(req, p);
      const body = await readJsonObject(req, bodyLimit);
      checkKeys("timeout option", body, ["timeout"]);
      if (!(typeof body.timeout === "number" && body.timeout > 0))
        throw new InvalidArgumentError(`timeout ${JSON.stringify(body.timeout)} is invalid: give a positive number of seconds`);
      // A paused sandbox waits for a connect, which sets its timeout anew.
      await settled(s);
      if (s.paused) throw new ConflictError(`sandbox ${m.id} is paused: connect to it (with a timeout) first`);
      table.setTimeout(m, body.timeout);
      res.writeHead(204).end();
    });
    on("GET", "/sandboxes/:sandboxID/metrics", metrics);
    on("POST", "/sandboxes/:sandboxID/pause", pause);
    on("POST", "/sandboxes/:sandboxID/connect", connect);
    on("POST", "/v2/sandboxes/:sandboxID/connect", connect);
    on("POST", "/sandboxes/:sandboxID/fork", forkRoute(sandboxes, bodyLimit, reached));
    snapshotRoutes(sandboxes, snapshots, bodyLimit)(on);
  };
}
