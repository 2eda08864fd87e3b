// The Microsandbox server protocol (the SDK page's Python, JS and Rust clients): JSON-RPC 2.0 at
// POST /api/v1/rpc. Sandboxes are named by (namespace, sandbox) within the caller's key. A failed
// call is answered by the server's one table (errors.ts): the JSON-RPC code it gives
// (RPC_ERRORS), data {type, code} naming the error, and, for a request that is not part of a
// batch, its HTTP status (429 with Retry-After when the server is full). A body that is not a
// JSON-RPC request at all is a 400.
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError, MicrosandboxError } from "../errors.js";
import type { Keys } from "./auth.js";
import type { ImageCatalog } from "./catalog.js";
import { SERVER_DEFAULTS } from "./defaults.js";
import { answerHeaders, answerOf, messageOf, NotFoundError, RPC_ERRORS } from "./errors.js";
import { readBody, sendJson } from "./http.js";
import type { SandboxTable } from "./sandboxes.js";

// A body that is not a JSON-RPC call (parse error, invalid request, no such method): JSON-RPC's own
// codes. Everything else a call can fail with is a typed error.
class EnvelopeError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

type Params = Record<string, unknown>;

const str = (v: unknown, what: string, fallback?: string): string => {
  const s = v ?? fallback;
  if (typeof s !== "string" || !s) throw new InvalidArgumentError(`${what} ${JSON.stringify(s)} is invalid: give a non-empty string`);
  return s;
};
const num = (v: unknown, what: string): number | undefined => {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !(v > 0)) throw new InvalidArgumentError(`${what} ${JSON.stringify(v)} is invalid: give a positive number`);
  return v;
};

// An execution's output as the protocol's lines: [{stream, text}].
const lines = (stdout: string, stderr: string) => [
  ...stdout
    .split("\n")
    .filter((l, i, a) => l || i < a.length - 1)
    .map((text) => ({ stream: "stdout", text })),
  ...stderr
    .split("\n")
    .filter((l, i, a) => l || i < a.length - 1)
    .map((text) => ({ stream: "stderr", text })),
];

// A failed call: its JSON-RPC error, and how it is answered over HTTP when it is alone.
function failure(err: unknown): {
  status: number;
  headers: Record<string, string>;
  error: { code: number; message: string; data?: { type: string; code: string } };
} {
  if (err instanceof EnvelopeError) return { status: 400, headers: {}, error: { code: err.code, message: err.message } };
  const a = answerOf(err);
  const data = err instanceof MicrosandboxError ? { data: { type: err.name, code: err.code } } : {};
  return { status: a.status, headers: answerHeaders(a), error: { code: a.rpc, message: messageOf(err), ...data } };
}

type Outcome = { id: string | number | null } & ({ result: unknown } | { failed: unknown });

const replyOf = (o: Outcome) => ({ jsonrpc: "2.0", id: o.id, ...("failed" in o ? { error: failure(o.failed).error } : { result: o.result }) });

// A request answered alone: a failure gets its HTTP status from the table, as the E2B API's do.
function sendFailure(res: ServerResponse, err: unknown, id: string | number | null = null): void {
  const f = failure(err);
  sendJson(res, f.status, { jsonrpc: "2.0", id, error: f.error }, f.headers);
}

export function msbRpc(table: SandboxTable, catalog: ImageCatalog, keys: Keys, bodyLimit: number) {
  const methods: Record<string, (owner: string, p: Params) => Promise<unknown>> = {
    "sandbox.start": async (owner, p) => {
      const namespace = str(p.namespace, "params.namespace", SERVER_DEFAULTS.rpc.namespace);
      const name = str(p.sandbox, "params.sandbox");
      const config = (p.config ?? {}) as Params;
      if (table.find(owner, namespace, name)) return `Sandbox ${name} is already running`;
      const image = str(config.image, "params.config.image", SERVER_DEFAULTS.rpc.image);
      await table.create({
        protocol: "microsandbox",
        owner,
        namespace,
        name,
        ...catalog.image(image),
        template: image,
        memory: num(config.memory, "params.config.memory"),
        cpus: num(config.cpus, "params.config.cpus"),
        env: Object.fromEntries(((config.envs as string[] | undefined) ?? []).map((e) => [e.split("=")[0]!, e.slice(e.indexOf("=") + 1)])),
        ...(typeof config.workdir === "string" ? { workdir: config.workdir } : {}),
      });
      return `Sandbox ${name} started`;
    },
    "sandbox.stop": async (owner, p) => {
      await table.kill(running(owner, p));
      return `Sandbox ${str(p.sandbox, "params.sandbox")} stopped`;
    },
    "sandbox.repl.run": async (owner, p) => {
      const m = running(owner, p);
      const language = str(p.language, "params.language");
      const code = str(p.code, "params.code");
      const e = await catalog.interpreterOf(m, language).run(code, { ...(p.timeout !== undefined ? { timeout: num(p.timeout, "params.timeout")! } : {}) });
      return { status: e.hasError() ? "error" : "success", language, output: lines(await e.output(), await e.error()), has_error: e.hasError() };
    },
    "sandbox.command.run": async (owner, p) => {
      const m = running(owner, p);
      const command = str(p.command, "params.command");
      const args = (p.args ?? []) as string[];
      if (!Array.isArray(args) || args.some((a) => typeof a !== "string"))
        throw new InvalidArgumentError(`params.args ${JSON.stringify(args)} is invalid: give an array of strings`);
      const r = await m.sandbox.command.run(command, args, p.timeout !== undefined ? { timeout: num(p.timeout, "params.timeout")! } : {});
      return { command, args, exit_code: r.exitCode ?? -1, success: r.success, output: lines(r.stdout, r.stderr) };
    },
    "sandbox.metrics.get": async (owner, p) => {
      const namespace = typeof p.namespace === "string" && p.namespace !== "*" ? p.namespace : undefined;
      const name = typeof p.sandbox === "string" ? p.sandbox : undefined;
      const chosen = table.list(owner).filter((m) => m.protocol === "microsandbox" && (!namespace || m.namespace === namespace) && (!name || m.name === name));
      const sandboxes = await Promise.all(
        chosen.map(async (m) => {
          const s = await m.sandbox.metrics().catch(() => undefined);
          return {
            namespace: m.namespace,
            name: m.name,
            running: m.sandbox.isRunning,
            cpu_usage: s?.cpu.percent ?? null,
            memory_usage: s ? Math.round(s.memory.usedBytes / 2 ** 20) : null,
            disk_usage: s?.disk.usedBytes ?? null,
          };
        }),
      );
      return { sandboxes };
    },
  };

  function running(owner: string, p: Params) {
    const namespace = str(p.namespace, "params.namespace", SERVER_DEFAULTS.rpc.namespace);
    const name = str(p.sandbox, "params.sandbox");
    const m = table.find(owner, namespace, name);
    if (!m) throw new NotFoundError(`no sandbox ${JSON.stringify(name)} in namespace ${JSON.stringify(namespace)}: start it with sandbox.start`);
    return m;
  }

  // One call's outcome; none for a notification.
  async function call(owner: string, msg: unknown): Promise<Outcome | undefined> {
    const m = msg as { jsonrpc?: unknown; id?: unknown; method?: unknown; params?: unknown };
    const id = m && typeof m === "object" && (typeof m.id === "string" || typeof m.id === "number") ? m.id : null;
    let outcome: Outcome;
    try {
      if (!m || typeof m !== "object" || m.jsonrpc !== "2.0" || typeof m.method !== "string")
        throw new EnvelopeError(RPC_ERRORS.invalidRequest, 'not a JSON-RPC 2.0 request: give {"jsonrpc": "2.0", "method", "params", "id"}');
      const fn = methods[m.method];
      if (!fn) throw new EnvelopeError(RPC_ERRORS.methodNotFound, `no method ${JSON.stringify(m.method)}; there are ${Object.keys(methods).join(", ")}`);
      const params = (m.params ?? {}) as Params;
      if (typeof params !== "object" || Array.isArray(params)) throw new InvalidArgumentError(`params ${JSON.stringify(params)} is invalid: give an object`);
      outcome = { id, result: await fn(owner, params) };
    } catch (err) {
      outcome = { id, failed: err };
    }
    return m && typeof m === "object" && "id" in m ? outcome : undefined;
  }

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let owner: string;
    let text: string;
    try {
      owner = keys.owner(req, ["authorization", "proxy-authorization"]);
      text = (await readBody(req, bodyLimit)).toString("utf8");
    } catch (err) {
      return sendFailure(res, err);
    }
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch (err) {
      return sendFailure(res, new EnvelopeError(RPC_ERRORS.parse, `the body is not JSON: ${messageOf(err)}`));
    }
    if (Array.isArray(msg)) {
      if (!msg.length) return sendFailure(res, new EnvelopeError(RPC_ERRORS.invalidRequest, "an empty batch: send at least one request"));
      const replies = (await Promise.all(msg.map((m) => call(owner, m)))).flatMap((o) => (o ? [replyOf(o)] : []));
      return replies.length ? sendJson(res, 200, replies) : void res.writeHead(204).end();
    }
    const outcome = await call(owner, msg);
    if (!outcome) return void res.writeHead(204).end(); // a notification
    if ("failed" in outcome) return sendFailure(res, outcome.failed, outcome.id);
    sendJson(res, 200, replyOf(outcome));
  };
}
