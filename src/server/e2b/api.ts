// The E2B API, so the e2b and @e2b/code-interpreter SDKs work unmodified against msb server:
// the control plane (E2B_API_URL: sandboxes created, listed, extended, paused, connected to,
// killed; X-API-KEY) and the data plane (E2B_SANDBOX_URL: every sandbox on this one port, chosen
// by the E2b-Sandbox-Id header and allowed by its X-Access-Token): envd's Connect RPC services
// (envd.ts), its /files and /health, and the code interpreter's /execute (port 49999).
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { once } from "node:events";
import { rmSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type FindMyWay from "find-my-way";

import { FileOperationError } from "../../errors.js";
import { PythonSandbox } from "../../sandbox/kinds.js";
import type { Keys } from "../auth.js";
import { HttpError, readBody, sendJson } from "../http.js";
import type { Managed, SandboxTable } from "../sandboxes.js";
import { envdRoutes } from "./envd.js";
import { ProcessTable } from "./processes.js";

/** The envd version reported: it turns on the SDK features served here (octet-stream uploads, recursive watches, stdin close). */
export const ENVD_VERSION = "0.5.7";
const ENVD_PORT = "49983";
const INTERPRETER_PORT = "49999";
const DEFAULT_TIMEOUT_S = 300;

interface E2bState {
  token: string;
  processes: ProcessTable;
  paused?: { kind: typeof PythonSandbox; name: string };
  /** The code interpreter's contexts: each an interpreter of its own. */
  contexts: Map<string, { cwd: string; interpreter: ReturnType<PythonSandbox["interpreter"]> }>;
}

export interface E2bOptions {
  /** Template ids to images; "base" and "code-interpreter-v1" default to local:python. */
  templates?: Record<string, string>;
  /** Largest file upload in bytes (default 100 MiB). */
  fileLimit?: number;
}

export function e2bApi(table: SandboxTable, keys: Keys, opts: E2bOptions, bodyLimit: number) {
  const state = new WeakMap<Managed, E2bState>();
  const templates: Record<string, string> = { base: "local:python", "code-interpreter-v1": "local:python", ...opts.templates };
  const fileLimit = opts.fileLimit ?? 100 * 2 ** 20;
  const owner = (req: IncomingMessage) => keys.owner(req, ["x-api-key"]);

  const info = (m: Managed) => ({
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
    state: state.get(m)?.paused ? "paused" : "running",
    envdVersion: ENVD_VERSION,
  });

  async function json(req: IncomingMessage): Promise<Record<string, unknown>> {
    const body = await readBody(req, bodyLimit);
    if (!body.length) return {};
    try {
      const v = JSON.parse(body.toString("utf8"));
      if (v && typeof v === "object" && !Array.isArray(v)) return v;
    } catch {
      // answered below
    }
    throw new HttpError(400, "the body is not a JSON object", "bad_request");
  }

  async function create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const who = owner(req);
    const body = await json(req);
    const template = typeof body.templateID === "string" && body.templateID ? body.templateID : "base";
    const timeout = typeof body.timeout === "number" && body.timeout > 0 ? body.timeout : DEFAULT_TIMEOUT_S;
    const metadata = body.metadata && typeof body.metadata === "object" ? (body.metadata as Record<string, string>) : {};
    const env = body.envVars && typeof body.envVars === "object" ? (body.envVars as Record<string, string>) : {};
    const m = await table.create({ protocol: "e2b", owner: who, namespace: "e2b", name: template, image: templates[template] ?? template, template, metadata, env, timeout });
    const token = randomBytes(24).toString("base64url");
    state.set(m, { token, processes: new ProcessTable(), contexts: new Map() });
    sendJson(res, 201, { sandboxID: m.id, templateID: template, alias: template, clientID: "msb", envdVersion: ENVD_VERSION, envdAccessToken: token, trafficAccessToken: token, domain: null });
  }

  // The caller's sandbox named in the path.
  const target = (req: IncomingMessage, params: Record<string, string | undefined>) => table.get(owner(req), params.sandboxID ?? "");

  async function connect(req: IncomingMessage, res: ServerResponse, params: Record<string, string | undefined>): Promise<void> {
    const m = target(req, params);
    const body = await json(req);
    const s = state.get(m)!;
    let status = 200;
    if (s.paused) {
      m.sandbox = await s.paused.kind.resume(s.paused.name);
      delete s.paused;
      delete m.discard;
      status = 201;
    }
    table.setTimeout(m, typeof body.timeout === "number" && body.timeout > 0 ? body.timeout : DEFAULT_TIMEOUT_S);
    sendJson(res, status, { sandboxID: m.id, templateID: m.template, alias: m.template, clientID: "msb", envdVersion: ENVD_VERSION, envdAccessToken: s.token, trafficAccessToken: s.token, domain: null });
  }

  function list(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://x");
    const wanted = new URLSearchParams(url.searchParams.get("metadata") ?? "");
    const states = url.searchParams.getAll("state").flatMap((s) => s.split(","));
    const limit = Math.min(Math.max(Number(url.searchParams.get("limit") ?? 100) || 100, 1), 1000);
    const after = url.searchParams.get("nextToken");
    let all = table
      .list(owner(req))
      .filter((m) => state.has(m))
      .filter((m) => [...wanted].every(([k, v]) => m.metadata[k] === v))
      .map(info)
      .filter((i) => !states.length || states.includes(i.state))
      .sort((a, b) => a.sandboxID.localeCompare(b.sandboxID));
    if (after) all = all.filter((i) => i.sandboxID > after);
    const page = all.slice(0, limit);
    sendJson(res, 200, page, all.length > limit ? { "x-next-token": page.at(-1)!.sandboxID } : {});
  }

  async function metrics(req: IncomingMessage, res: ServerResponse, params: Record<string, string | undefined>): Promise<void> {
    const m = target(req, params);
    const s = await m.sandbox.metrics();
    const now = new Date();
    sendJson(res, 200, [
      { timestamp: now.toISOString(), timestampUnix: Math.floor(now.getTime() / 1000), cpuCount: s.cpu.cores, cpuUsedPct: s.cpu.percent, memUsed: s.memory.usedBytes, memTotal: s.memory.totalBytes, diskUsed: s.disk.usedBytes, diskTotal: s.disk.usedBytes + s.disk.freeBytes },
    ]);
  }

  async function pause(req: IncomingMessage, res: ServerResponse, params: Record<string, string | undefined>): Promise<void> {
    const m = target(req, params);
    const s = state.get(m)!;
    if (s.paused) throw new HttpError(409, `sandbox ${m.id} is already paused`, "conflict");
    const dir = await m.sandbox.pause();
    s.paused = { kind: m.sandbox.constructor as typeof PythonSandbox, name: m.sandbox.name };
    // Paused, it waits for a connect, not for its timeout; killed, its saved state goes too.
    clearTimeout(m.timer);
    m.discard = () => rmSync(dir, { recursive: true, force: true });
    s.processes = new ProcessTable();
    s.contexts.clear(); // their interpreters did not survive the pause
    res.writeHead(204).end();
  }

  function routes(router: FindMyWay.Instance<FindMyWay.HTTPVersion.V1>, wrap: (fn: (req: IncomingMessage, res: ServerResponse, params: Record<string, string | undefined>) => Promise<void> | void) => FindMyWay.Handler<FindMyWay.HTTPVersion.V1>): void {
    router.on("POST", "/sandboxes", wrap(create));
    router.on("POST", "/v2/sandboxes", wrap(create));
    router.on("GET", "/sandboxes", wrap(list));
    router.on("GET", "/v2/sandboxes", wrap(list));
    router.on("GET", "/sandboxes/:sandboxID", wrap((req, res, p) => {
      const m = target(req, p);
      sendJson(res, 200, { ...info(m), envdAccessToken: state.get(m)?.token });
    }));
    router.on("DELETE", "/sandboxes/:sandboxID", wrap(async (req, res, p) => {
      await table.kill(target(req, p));
      res.writeHead(204).end();
    }));
    router.on("POST", "/sandboxes/:sandboxID/timeout", wrap(async (req, res, p) => {
      const m = target(req, p);
      const body = await json(req);
      if (!(typeof body.timeout === "number" && body.timeout > 0)) throw new HttpError(400, "timeout must be a positive number of seconds", "bad_request");
      table.setTimeout(m, body.timeout);
      res.writeHead(204).end();
    }));
    router.on("GET", "/sandboxes/:sandboxID/metrics", wrap(metrics));
    router.on("POST", "/sandboxes/:sandboxID/pause", wrap(pause));
    router.on("POST", "/sandboxes/:sandboxID/connect", wrap(connect));
    router.on("POST", "/v2/sandboxes/:sandboxID/connect", wrap(connect));
  }

  // ------------------------------------------------------------------ data plane

  const sandboxOf = (headers: { get(name: string): string | null }) => {
    const id = headers.get("e2b-sandbox-id") ?? "";
    const m = table.byId(id);
    const s = m && state.get(m);
    if (!m || !s) throw new ConnectError(`sandbox ${JSON.stringify(id)} not found`, Code.NotFound);
    // envd calls carry X-Access-Token; the code interpreter's some only the traffic token, the same one here.
    const token = Buffer.from(headers.get("x-access-token") ?? headers.get("e2b-traffic-access-token") ?? "");
    const want = Buffer.from(s.token);
    if (token.length !== want.length || !timingSafeEqual(token, want)) throw new ConnectError("the access token of this sandbox is missing or wrong", Code.Unauthenticated);
    if (s.paused) throw new ConnectError(`sandbox ${id} is paused: connect to it first`, Code.FailedPrecondition);
    return Object.assign(m, { processes: s.processes });
  };
  const envd = connectNodeAdapter({ routes: envdRoutes(sandboxOf) });
  const headersOf = (req: IncomingMessage) => ({ get: (n: string) => (typeof req.headers[n] === "string" ? (req.headers[n] as string) : null) });

  /** Serves a data-plane request (one with E2b-Sandbox-Id). */
  async function dataPlane(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const port = String(req.headers["e2b-sandbox-port"] ?? ENVD_PORT);
    const url = new URL(req.url ?? "/", "http://x");
    if (port === ENVD_PORT && /^\/(process\.Process|filesystem\.Filesystem)\//.test(url.pathname)) return envd(req, res);
    let m;
    try {
      m = sandboxOf(headersOf(req));
    } catch (err) {
      const e = err as ConnectError;
      throw new HttpError(e.code === Code.NotFound ? 404 : e.code === Code.Unauthenticated ? 401 : 409, e.rawMessage, "sandbox");
    }
    if (port === ENVD_PORT && url.pathname === "/health") return void res.writeHead(204).end();
    if (port === ENVD_PORT && url.pathname === "/files") return files(m.sandbox, req, res, url);
    if (port === INTERPRETER_PORT && url.pathname === "/execute" && req.method === "POST") return execute(m, req, res);
    if (port === INTERPRETER_PORT && url.pathname.startsWith("/contexts")) return contexts(m, req, res, url.pathname);
    throw new HttpError(404, `sandbox port ${port} serves no ${req.method} ${url.pathname}`, "not_found");
  }

  // A presigned file URL (downloadUrl / uploadUrl): no sandbox header, but a signature only the
  // holder of a sandbox's token can make, over the path, the operation, the user and the expiry.
  // The sandbox is the one whose token makes it.
  async function presigned(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://x");
    const path = url.searchParams.get("path") ?? "";
    const signature = Buffer.from(url.searchParams.get("signature") ?? "");
    const expiration = url.searchParams.get("signature_expiration");
    const operation = req.method === "GET" ? "read" : "write";
    const user = url.searchParams.get("username") ?? "";
    if (expiration !== null && !(Number(expiration) * 1000 > Date.now())) throw new HttpError(403, "the signed URL has expired", "expired");
    const raw = (token: string) => `${path}:${operation}:${user}:${token}${expiration !== null ? `:${expiration}` : ""}`;
    const sign = (token: string) => Buffer.from(`v1_${createHash("sha256").update(raw(token)).digest("base64").replace(/=+$/, "")}`);
    const m = table.everyone().find((c) => {
      const s = state.get(c);
      const want = s && !s.paused ? sign(s.token) : undefined;
      return want !== undefined && want.length === signature.length && timingSafeEqual(want, signature);
    });
    if (!m) throw new HttpError(403, "the signature matches no running sandbox", "forbidden");
    return files(m.sandbox, req, res, url);
  }

  async function files(sb: Managed["sandbox"], req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const path = url.searchParams.get("path") ?? "";
    if (!path.startsWith("/")) throw new HttpError(400, `path ${JSON.stringify(path)} must be an absolute guest path`, "bad_request");
    if (path.split("/").includes("..")) throw new HttpError(400, `path ${JSON.stringify(path)} may not contain ".."`, "bad_request");
    try {
      if (req.method === "GET") {
        // Streamed under the guest's credit, whatever the file's size: a slow client holds the
        // read back, not host memory.
        const st = await sb.fs.stat(path);
        if (st.type === "directory") throw new HttpError(400, `${path} is a directory`, "bad_request");
        res.writeHead(200, { "content-type": "application/octet-stream" });
        return await pipeline(Readable.from(sb.fs.readStream(path)), res);
      }
      if (req.method !== "POST") throw new HttpError(405, `${req.method} /files is not served`, "method");
      const type = String(req.headers["content-type"] ?? "");
      const body = await readBody(req, fileLimit);
      let data: Buffer;
      if (type.startsWith("multipart/form-data")) {
        const form = await new Request("http://x/", { method: "POST", headers: { "content-type": type }, body }).formData();
        const file = form.get("file");
        if (!file || typeof file === "string") throw new HttpError(400, 'a multipart upload needs a "file" field', "bad_request");
        data = Buffer.from(await file.arrayBuffer());
      } else {
        data = body;
      }
      await sb.fs.write(path, data);
      sendJson(res, 200, [{ name: path.split("/").pop(), type: "file", path }]);
    } catch (err) {
      if (err instanceof FileOperationError) throw new HttpError(err.errnoName === "ENOENT" ? 404 : err.errnoName === "EISDIR" ? 400 : 500, err.message, err.errnoName ?? "io");
      throw err;
    }
  }

  // The code interpreter's contexts: POST creates one (an interpreter of its own), GET lists,
  // DELETE /contexts/ID ends one, POST /contexts/ID/restart starts it afresh.
  async function contexts(m: Managed, req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    const sb = m.sandbox;
    if (!(sb instanceof PythonSandbox)) throw new HttpError(400, "this sandbox's template has no Python interpreter", "bad_request");
    const all = state.get(m)!.contexts;
    const shown = (id: string, c: { cwd: string }) => ({ id, language: "python", cwd: c.cwd });
    const [, , id, action] = pathname.split("/");
    if (!id && req.method === "POST") {
      const body = await json(req);
      if (body.language && body.language !== "python") throw new HttpError(400, `language ${JSON.stringify(body.language)} is not served here: python`, "bad_request");
      const cwd = typeof body.cwd === "string" && body.cwd.startsWith("/") ? body.cwd : "/root";
      const ctxId = randomBytes(8).toString("hex");
      const c = { cwd, interpreter: sb.interpreter() };
      await c.interpreter.run(`import os
os.makedirs(${JSON.stringify(cwd)}, exist_ok=True)
os.chdir(${JSON.stringify(cwd)})`);
      all.set(ctxId, c);
      return sendJson(res, 200, shown(ctxId, c));
    }
    if (!id && req.method === "GET") return sendJson(res, 200, [...all].map(([i, c]) => shown(i, c)));
    const c = id ? all.get(id) : undefined;
    if (!c) throw new HttpError(404, `context ${JSON.stringify(id)} not found`, "not_found");
    if (!action && req.method === "DELETE") {
      c.interpreter.close();
      all.delete(id!);
      return void res.writeHead(204).end();
    }
    if (action === "restart" && req.method === "POST") {
      c.interpreter.close();
      c.interpreter = sb.interpreter();
      await c.interpreter.run(`import os
os.chdir(${JSON.stringify(c.cwd)})`);
      return void res.writeHead(204).end();
    }
    throw new HttpError(404, `${req.method} ${pathname} is not served`, "not_found");
  }

  // The code interpreter's /execute: the sandbox's interpreter, or a context's, answered as
  // newline-delimited JSON events.
  async function execute(m: Managed, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const sb = m.sandbox;
    const body = await json(req);
    if (typeof body.code !== "string") throw new HttpError(400, "code must be a string", "bad_request");
    if (!(sb instanceof PythonSandbox)) throw new HttpError(400, "this sandbox's template has no Python interpreter", "bad_request");
    const ctx = typeof body.context_id === "string" ? state.get(m)!.contexts.get(body.context_id) : undefined;
    if (typeof body.context_id === "string" && !ctx) throw new HttpError(404, `context ${JSON.stringify(body.context_id)} not found`, "not_found");
    const e = ctx ? await ctx.interpreter.run(body.code) : await sb.run(body.code);
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    const line = (o: object) => res.write(JSON.stringify(o) + "\n");
    const now = new Date().toISOString();
    // The interpreter echoes a final expression's value on stdout, as a prompt does; here it is
    // the main result instead.
    const echoed = e.result !== undefined && e.stdout.endsWith(`${e.result}\n`) ? e.result.length + 1 : 0;
    const printed = e.stdout.slice(0, e.stdout.length - echoed);
    if (printed) line({ type: "stdout", text: printed, timestamp: now });
    if (e.hasError()) {
      // The report ends in "Name: value"; the traceback is all of it.
      const last = e.stderr.trim().split("\n").at(-1) ?? "";
      const at = last.indexOf(": ");
      line({ type: "error", name: e.errorName ?? (at > 0 ? last.slice(0, at) : last), value: at > 0 ? last.slice(at + 2) : "", traceback: e.stderr });
    } else {
      if (e.stderr) line({ type: "stderr", text: e.stderr, timestamp: now });
      if (e.result !== undefined) line({ type: "result", text: e.result, is_main_result: true });
    }
    line({ type: "end_of_execution" });
    res.end();
  }

  // getHost(port): PORT-ID.DOMAIN, reached through this server with that Host header. Each
  // request is carried to the guest's 127.0.0.1:PORT by a relay process in the guest (nc, else
  // python3) over the agent's channel, with "Connection: close", and the raw response comes back
  // on the client's socket. No network device is needed in the sandbox.
  async function portProxy(req: IncomingMessage, res: ServerResponse, port: number, id: string): Promise<void> {
    const m = table.byId(id);
    const s = m && state.get(m);
    if (!m || !s || s.paused) throw new HttpError(502, `sandbox ${id} is not running`, "no_sandbox");
    if (!(port >= 1 && port <= 65535)) throw new HttpError(400, `port ${port} is invalid`, "bad_request");
    const body = await readBody(req, fileLimit);
    const headers = Object.entries(req.headers)
      .filter(([k]) => k !== "connection" && k !== "keep-alive" && k !== "content-length" && k !== "transfer-encoding")
      .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`);
    const head = [`${req.method} ${req.url} HTTP/1.1`, ...headers, `content-length: ${body.length}`, "connection: close", "", ""].join("\r\n");
    const relay = `if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 ${port}; else exec python3 -c 'import socket,sys,threading
s=socket.create_connection(("127.0.0.1",${port}))
def up():
    for d in iter(lambda: sys.stdin.buffer.read1(65536), b""): s.sendall(d)
threading.Thread(target=up,daemon=True).start()
for d in iter(lambda: s.recv(65536), b""): sys.stdout.buffer.write(d); sys.stdout.buffer.flush()'; fi`;
    const proc = m.sandbox.command.spawn("sh", ["-c", relay], { stdin: true, timeout: 300 });
    await proc.write(Buffer.concat([Buffer.from(head), body]));
    const sock = res.socket!;
    let sent = 0;
    for await (const chunk of proc) {
      if (chunk.stream !== "stdout") continue;
      sent += chunk.data.length;
      // Waiting for a slow client holds the relay back (the process's credit), not host memory.
      if (!sock.write(chunk.data)) await Promise.race([once(sock, "drain"), once(sock, "close")]);
      if (sock.destroyed) {
        proc.kill(); // the client left
        break;
      }
    }
    const exit = await proc.exit;
    if (!sent) {
      throw new HttpError(502, `nothing answered on port ${port} in sandbox ${id} (relay exit ${exit.exitCode})`, "bad_gateway");
    }
    sock.end();
  }

  return { routes, dataPlane, presigned, portProxy };
}
