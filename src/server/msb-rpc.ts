// The Microsandbox server protocol (the SDK page's Python, JS and Rust clients): JSON-RPC 2.0 at
// POST /api/v1/rpc. Sandboxes are named by (namespace, sandbox) within the caller's key. Errors
// carry stable codes: the JSON-RPC ones, and -32001 unauthorized, -32004 not found, -32005 the
// server is full (HTTP 429, Retry-After), -32010 the sandbox failed the call (timeout, resource).
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError, MicrosandboxError, TimeoutError } from "../errors.js";
import { NodeSandbox, PythonSandbox } from "../sandbox/kinds.js";
import type { Keys } from "./auth.js";
import { SERVER_DEFAULTS } from "./defaults.js";
import { HttpError, readBody, sendJson } from "./http.js";
import type { SandboxTable } from "./sandboxes.js";

export const RPC_ERRORS = {
  parse: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internal: -32603,
  unauthorized: -32001,
  notFound: -32004,
  full: -32005,
  sandbox: -32010,
} as const;

class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

type Params = Record<string, unknown>;

const str = (p: Params, key: string, fallback?: string): string => {
  const v = p[key] ?? fallback;
  if (typeof v !== "string" || !v) throw new RpcError(RPC_ERRORS.invalidParams, `params.${key} must be a non-empty string`);
  return v;
};
const num = (v: unknown, what: string): number | undefined => {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !(v > 0)) throw new RpcError(RPC_ERRORS.invalidParams, `${what} must be a positive number`);
  return v;
};

// An execution's output as the protocol's lines: [{stream, text}].
const lines = (stdout: string, stderr: string) => [
  ...stdout.split("\n").filter((l, i, a) => l || i < a.length - 1).map((text) => ({ stream: "stdout", text })),
  ...stderr.split("\n").filter((l, i, a) => l || i < a.length - 1).map((text) => ({ stream: "stderr", text })),
];

export function msbRpc(table: SandboxTable, keys: Keys, bodyLimit: number) {
  const methods: Record<string, (owner: string, p: Params) => Promise<unknown>> = {
    "sandbox.start": async (owner, p) => {
      const namespace = str(p, "namespace", SERVER_DEFAULTS.rpc.namespace);
      const name = str(p, "sandbox");
      const config = (p.config ?? {}) as Params;
      if (table.find(owner, namespace, name)) return `Sandbox ${name} is already running`;
      await table.create({
        protocol: "microsandbox",
        owner,
        namespace,
        name,
        image: str(config, "image", SERVER_DEFAULTS.rpc.image),
        memory: num(config.memory, "config.memory"),
        cpus: num(config.cpus, "config.cpus"),
        env: Object.fromEntries(((config.envs as string[] | undefined) ?? []).map((e) => [e.split("=")[0]!, e.slice(e.indexOf("=") + 1)])),
        ...(typeof config.workdir === "string" ? { workdir: config.workdir } : {}),
      });
      return `Sandbox ${name} started`;
    },
    "sandbox.stop": async (owner, p) => {
      await table.kill(running(owner, p));
      return `Sandbox ${str(p, "sandbox")} stopped`;
    },
    "sandbox.repl.run": async (owner, p) => {
      const m = running(owner, p);
      const language = str(p, "language");
      const code = str(p, "code");
      const sb = m.sandbox;
      const wanted = language === "python" ? PythonSandbox : language === "nodejs" || language === "javascript" ? NodeSandbox : undefined;
      if (!wanted || !(sb instanceof wanted)) throw new RpcError(RPC_ERRORS.invalidParams, `sandbox ${m.name} runs ${m.template}, which has no ${language} interpreter`);
      const e = await (sb as PythonSandbox).run(code, { ...(p.timeout !== undefined ? { timeout: num(p.timeout, "params.timeout")! } : {}) });
      return { status: e.hasError() ? "error" : "success", language, output: lines(await e.output(), await e.error()), has_error: e.hasError() };
    },
    "sandbox.command.run": async (owner, p) => {
      const m = running(owner, p);
      const command = str(p, "command");
      const args = (p.args ?? []) as string[];
      if (!Array.isArray(args) || args.some((a) => typeof a !== "string")) throw new RpcError(RPC_ERRORS.invalidParams, "params.args must be an array of strings");
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
          return { namespace: m.namespace, name: m.name, running: m.sandbox.isRunning, cpu_usage: s?.cpu.percent ?? null, memory_usage: s ? Math.round(s.memory.usedBytes / 2 ** 20) : null, disk_usage: s?.disk.usedBytes ?? null };
        }),
      );
      return { sandboxes };
    },
  };

  function running(owner: string, p: Params) {
    const namespace = str(p, "namespace", SERVER_DEFAULTS.rpc.namespace);
    const name = str(p, "sandbox");
    const m = table.find(owner, namespace, name);
    if (!m) throw new RpcError(RPC_ERRORS.notFound, `no sandbox ${JSON.stringify(name)} in namespace ${JSON.stringify(namespace)}`);
    return m;
  }

  async function call(owner: string, msg: unknown): Promise<object | undefined> {
    const m = msg as { jsonrpc?: unknown; id?: unknown; method?: unknown; params?: unknown };
    const id = m && typeof m === "object" && (typeof m.id === "string" || typeof m.id === "number") ? m.id : null;
    const reply = (body: object) => (m && typeof m === "object" && "id" in m ? { jsonrpc: "2.0", id, ...body } : undefined);
    try {
      if (!m || typeof m !== "object" || m.jsonrpc !== "2.0" || typeof m.method !== "string") throw new RpcError(RPC_ERRORS.invalidRequest, 'not a JSON-RPC 2.0 request: give {"jsonrpc": "2.0", "method", "params", "id"}');
      const fn = methods[m.method];
      if (!fn) throw new RpcError(RPC_ERRORS.methodNotFound, `no method ${JSON.stringify(m.method)}; there are ${Object.keys(methods).join(", ")}`);
      const params = (m.params ?? {}) as Params;
      if (typeof params !== "object" || Array.isArray(params)) throw new RpcError(RPC_ERRORS.invalidParams, "params must be an object");
      return reply({ result: await fn(owner, params) });
    } catch (err) {
      return reply({ error: toRpcError(err) });
    }
  }

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let owner: string;
    try {
      owner = keys.owner(req, ["authorization", "proxy-authorization"]);
    } catch (err) {
      return sendJson(res, 401, { jsonrpc: "2.0", id: null, error: { code: RPC_ERRORS.unauthorized, message: (err as Error).message } });
    }
    let msg: unknown;
    try {
      msg = JSON.parse((await readBody(req, bodyLimit)).toString("utf8"));
    } catch (err) {
      const status = err instanceof HttpError ? err.status : 400;
      return sendJson(res, status, { jsonrpc: "2.0", id: null, error: { code: err instanceof HttpError ? RPC_ERRORS.invalidRequest : RPC_ERRORS.parse, message: err instanceof HttpError ? err.message : `the body is not JSON: ${(err as Error).message}` } });
    }
    if (Array.isArray(msg)) {
      if (!msg.length) return sendJson(res, 400, { jsonrpc: "2.0", id: null, error: { code: RPC_ERRORS.invalidRequest, message: "an empty batch" } });
      const replies = (await Promise.all(msg.map((m) => call(owner, m)))).filter(Boolean);
      return replies.length ? sendJson(res, 200, replies) : void res.writeHead(204).end();
    }
    const reply = await call(owner, msg);
    if (!reply) return void res.writeHead(204).end(); // a notification
    const full = (reply as { error?: { code: number } }).error?.code === RPC_ERRORS.full;
    sendJson(res, full ? 429 : 200, reply, full ? { "retry-after": String(SERVER_DEFAULTS.retryAfterS) } : {});
  };
}

function toRpcError(err: unknown): { code: number; message: string; data?: unknown } {
  if (err instanceof RpcError) return { code: err.code, message: err.message };
  if (err instanceof HttpError) {
    const code = err.status === 429 ? RPC_ERRORS.full : err.status === 404 ? RPC_ERRORS.notFound : err.status === 503 ? RPC_ERRORS.full : RPC_ERRORS.internal;
    return { code, message: err.message };
  }
  if (err instanceof InvalidArgumentError) return { code: RPC_ERRORS.invalidParams, message: err.message };
  if (err instanceof TimeoutError || err instanceof MicrosandboxError) return { code: RPC_ERRORS.sandbox, message: err.message, data: { type: err.name, code: (err as MicrosandboxError).code } };
  return { code: RPC_ERRORS.internal, message: (err as Error)?.message ?? String(err) };
}
