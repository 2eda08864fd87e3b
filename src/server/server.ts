// msb server: sandboxes over HTTP for clients that only talk to a server. One node:http server
// with a find-my-way router: the Microsandbox JSON-RPC protocol (msb-rpc.ts) and the E2B API
// (e2b/: control plane, and a data plane for requests carrying E2b-Sandbox-Id). It binds to
// loopback unless told otherwise and refuses any other address without an API key; close() stops
// every sandbox it runs, or with `outlive` lets them run on for the next server to adopt.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";

import FindMyWay from "find-my-way";

import { InvalidArgumentError } from "../errors.js";
import { checkKeys, keysOf } from "../keys.js";
import { Keys } from "./auth.js";
import { ImageCatalog, type ImageOption } from "./catalog.js";
import { type BUILTIN_IMAGES, defaultMemoryBudgetMiB, SERVER_DEFAULTS } from "./defaults.js";
import { type E2bOptions, e2bApi } from "./e2b/api.js";
import { portHost, requestHead } from "./e2b/ports.js";
import { NotFoundError } from "./errors.js";
import { sendError, sendJson } from "./http.js";
import { msbRpc } from "./msb-rpc.js";
import { type Limits, SandboxTable } from "./sandboxes.js";
import { type Adoption, takeOver } from "./takeover.js";

export interface ServerOptions {
  /** The address to listen on (default {@link SERVER_DEFAULTS}.host). Any other than loopback needs `apiKeys`. */
  host?: string;
  /** The port (default {@link SERVER_DEFAULTS}.port); 0 picks a free one. */
  port?: number;
  /** Accepted keys (Authorization: Bearer KEY); each key sees only its own sandboxes. */
  apiKeys?: string[];
  /** Sandboxes running at once (default {@link SERVER_DEFAULTS}.maxSandboxes); paused ones are not counted. */
  maxSandboxes?: number;
  /** Paused sandboxes kept (default {@link SERVER_DEFAULTS}.maxPaused). */
  maxPaused?: number;
  /** MiB all sandboxes may take together (default {@link defaultMemoryBudgetMiB}). */
  memoryBudgetMiB?: number;
  /** Largest request body in bytes (default {@link SERVER_DEFAULTS}.bodyLimit). */
  bodyLimit?: number;
  /**
   * Microsandbox image names (sandbox.start's config.image) to images and the kind of sandbox each
   * makes, added to {@link BUILTIN_IMAGES}: `{ image: "python:3.12-slim", kind: "PythonSandbox" }`.
   * A bare string is an image reference: under a built-in name it keeps that name's kind, under
   * any other it is a CustomSandbox (no interpreter). A name in no table is taken as an image
   * reference, a CustomSandbox.
   */
  images?: Record<string, ImageOption>;
  /** One JSON line per request on stderr (default off). */
  accessLog?: boolean;
  /** The E2B API's templates and upload limit. */
  e2b?: E2bOptions;
  /**
   * Sandboxes outlive this server (default false: they stop with it): close() lets them run on,
   * and a server created later on this cache adopts them, tokens, timeouts and metadata kept (a
   * timeout that passed meanwhile stops one then); paused ones wait for a resume there. Every
   * server adopts what an earlier one left; this decides what its own close() does. Ones with
   * volumes still stop with the server. QEMU only.
   */
  outlive?: boolean;
}

export interface RunningServer {
  url: string;
  port: number;
  /** Stops accepting requests and stops every sandbox (with `outlive`, lets those that can run on, and the paused ones, go to the next server: how many). */
  close(): Promise<number>;
  /** What this server adopted at its start of what a previous server on its cache left running or paused, and what it stopped. */
  readonly adoption: Adoption;
  /** @internal */
  readonly table: SandboxTable;
}

/** What a request asking to upgrade loses when it is served as it is. */
const NOT_UPGRADING = new Set(["upgrade", "connection", "http2-settings"]);

const LOOPBACK = /^(127(\.\d{1,3}){3}|::1|localhost)$/;

const SERVER_KEYS = keysOf<ServerOptions>({
  host: true,
  port: true,
  apiKeys: true,
  maxSandboxes: true,
  maxPaused: true,
  memoryBudgetMiB: true,
  bodyLimit: true,
  images: true,
  accessLog: true,
  e2b: true,
  outlive: true,
});
const E2B_KEYS = keysOf<E2bOptions>({ templates: true, fileLimit: true });

export async function createServer(opts: ServerOptions = {}): Promise<RunningServer> {
  checkKeys("server option", opts, SERVER_KEYS);
  if (opts.e2b) checkKeys("server e2b option", opts.e2b, E2B_KEYS);
  const host = opts.host ?? SERVER_DEFAULTS.host;
  const keys = new Keys(opts.apiKeys ?? []);
  if (!LOOPBACK.test(host) && !keys.required) {
    throw new InvalidArgumentError(
      `the server would listen on ${host}, beyond this machine, with no API key: give apiKeys (msb server --api-key), or listen on 127.0.0.1`,
    );
  }
  const catalog = new ImageCatalog({ images: opts.images, templates: opts.e2b?.templates });
  const limits: Limits = {
    maxSandboxes: opts.maxSandboxes ?? SERVER_DEFAULTS.maxSandboxes,
    maxPaused: opts.maxPaused ?? SERVER_DEFAULTS.maxPaused,
    memoryBudgetMiB: opts.memoryBudgetMiB ?? defaultMemoryBudgetMiB(),
  };
  const table = new SandboxTable(limits, opts.outlive === true);
  const bodyLimit = opts.bodyLimit ?? SERVER_DEFAULTS.bodyLimit;
  const router = FindMyWay({
    defaultRoute: (req, res) => sendError(res, new NotFoundError(`no such endpoint: ${req.method} ${req.url?.split("?")[0]}`)),
  });
  router.on("GET", "/api/v1/health", (_req, res) => sendJson(res, 200, { status: "ok" }));
  const rpc = msbRpc(table, catalog, keys, bodyLimit);
  router.on("POST", "/api/v1/rpc", (req, res) => void rpc(req, res).catch((err) => sendError(res, err)));
  // Every sandbox of the caller's key, whichever protocol made it (msb ps, msb kill).
  router.on("GET", "/api/v1/sandboxes", (req, res) => {
    try {
      const owner = keys.owner(req, ["authorization"]);
      sendJson(
        res,
        200,
        table.list(owner).map((m) => ({
          id: m.id,
          protocol: m.protocol,
          namespace: m.namespace,
          name: m.name,
          template: m.template,
          memoryMiB: m.memory,
          running: m.sandbox.isRunning,
          pid: m.sandbox.pid ?? null,
          startedAt: m.startedAt.toISOString(),
          ...(m.endAt ? { endAt: new Date(m.endAt).toISOString() } : {}),
        })),
      );
    } catch (err) {
      sendError(res, err);
    }
  });
  router.on("DELETE", "/api/v1/sandboxes/:id", (req, res, params) => {
    void Promise.resolve()
      .then(async () => {
        await table.kill(table.get(keys.owner(req, ["authorization"]), params.id ?? ""));
        res.writeHead(204).end();
      })
      .catch((err) => sendError(res, err));
  });
  const e2b = e2bApi(table, catalog, keys, opts.e2b ?? {}, bodyLimit);
  e2b.routes((method, path, fn) =>
    router.on(method, path, (req, res, params) => {
      void Promise.resolve()
        .then(() => fn(req, res, params))
        .catch((err) => sendError(res, err));
    }),
  );

  const server: Server = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    const t0 = performance.now();
    if (opts.accessLog) {
      res.once("finish", () =>
        process.stderr.write(
          `${JSON.stringify({
            time: new Date().toISOString(),
            method: req.method,
            path: req.url?.split("?")[0],
            status: res.statusCode,
            ms: Math.round(performance.now() - t0),
          })}\n`,
        ),
      );
    }
    try {
      const host = portHost(req.headers.host);
      if (host) void e2b.ports.relay(req, res, host.port, host.id).catch((err) => sendError(res, err));
      else if (req.headers["e2b-sandbox-id"]) void e2b.dataPlane(req, res).catch((err) => sendError(res, err));
      else if (/^\/files\?(.*&)?signature=/.test(req.url ?? "")) void e2b.presigned(req, res).catch((err) => sendError(res, err));
      else router.lookup(req, res);
    } catch (err) {
      sendError(res, err);
    }
  });
  // Upgrades (WebSocket) are getHost's alone. Another request that asks for one is handed back to
  // the HTTP server without its Upgrade, as a server that does not upgrade would take it.
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const host = portHost(req.headers.host);
    if (host) return void e2b.ports.upgrade(req, socket, head, host.port, host.id);
    socket.unshift(Buffer.concat([requestHead(req, NOT_UPGRADING), head]));
    server.emit("connection", socket);
  });
  // What a server on this cache left running goes on here (and, without outlive, stops with it),
  // before any client can ask for it.
  const adoption = await takeOver(table, (m, extra) => (m.protocol === "e2b" ? e2b.adopt(m, extra) : Promise.resolve()));
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port ?? SERVER_DEFAULTS.port, host, () => resolve());
    });
  } catch (err) {
    // Nobody could reach what was adopted: it is let go of again, for a server that can listen.
    await Promise.all([table.close(true), e2b.close()]);
    throw err;
  }
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<number> | undefined;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    table,
    adoption,
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        const [kept] = await Promise.all([table.close(), e2b.close()]);
        server.closeAllConnections();
        await stopped;
        return kept;
      })();
      return closing;
    },
  };
}
