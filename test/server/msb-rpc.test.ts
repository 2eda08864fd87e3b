// The Microsandbox server protocol (JSON-RPC 2.0 at /api/v1/rpc), driven over HTTP as the SDK
// page's clients do: every method, auth failures, another key's and another namespace's
// sandboxes, bad input, and the limits.
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createServer, InvalidArgumentError, type RunningServer, Sandbox } from "../../src/index.js";
import { SERVER_DEFAULTS } from "../../src/server/defaults.js";

let server: RunningServer;
const KEY = "test-key-1";
const OTHER = "test-key-2";

beforeAll(async () => {
  server = await createServer({
    port: 0,
    apiKeys: [KEY, OTHER],
    maxSandboxes: 2,
    images: { "microsandbox/python": process.env.MSB_PYTHON_IMAGE ?? "local:python" },
  });
});
afterAll(() => server?.close());

interface RpcError {
  code: number;
  message: string;
  data?: { code: string };
}
interface ReplResult {
  status: string;
  language: string;
  output: { stream: string; text: string }[];
  has_error: boolean;
}
interface MetricsResult {
  sandboxes: { namespace: string; name: string; running: boolean; memory_usage: number }[];
}

let nextId = 1;
async function rpc<R = unknown>(method: string, params: object, key: string | null = KEY) {
  const res = await fetch(`${server.url}/api/v1/rpc`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ jsonrpc: "2.0", id: nextId++, method, params }),
  });
  return {
    status: res.status,
    headers: res.headers,
    body: (await res.json()) as { result?: R; error?: RpcError },
  };
}

describe("the Microsandbox JSON-RPC server", () => {
  it("answers health, and refuses missing or wrong keys with 401 and code -32001", async () => {
    expect(await (await fetch(`${server.url}/api/v1/health`)).json()).toEqual({ status: "ok" });
    for (const key of [null, "wrong"]) {
      const r = await rpc("sandbox.metrics.get", {}, key);
      expect(r.status).toBe(401);
      expect(r.body.error?.code).toBe(-32001);
    }
  });

  it("starts a Python sandbox, runs code and commands in it, reports metrics, and stops it", async () => {
    const start = await rpc("sandbox.start", {
      namespace: "team",
      sandbox: "py",
      config: { image: "microsandbox/python", memory: 512, envs: ["GREETING=hi"] },
    });
    expect(start.body.result).toBe("Sandbox py started");
    try {
      const a = await rpc("sandbox.repl.run", { namespace: "team", sandbox: "py", language: "python", code: "x = 20\nprint('x is', x)" });
      expect(a.body.result).toEqual({ status: "success", language: "python", output: [{ stream: "stdout", text: "x is 20" }], has_error: false });
      const b = await rpc<ReplResult>("sandbox.repl.run", { namespace: "team", sandbox: "py", language: "python", code: "x * 2 + 2" });
      expect(b.body.result?.output).toEqual([{ stream: "stdout", text: "42" }]);
      const bad = await rpc<ReplResult>("sandbox.repl.run", { namespace: "team", sandbox: "py", language: "python", code: "1/0" });
      expect(bad.body.result?.status).toBe("error");
      expect(bad.body.result?.output.some((l) => l.stream === "stderr" && /ZeroDivisionError/.test(l.text))).toBe(true);
      const cmd = await rpc("sandbox.command.run", { namespace: "team", sandbox: "py", command: "sh", args: ["-c", "echo $GREETING; echo oops >&2; exit 3"] });
      expect(cmd.body.result).toEqual({
        command: "sh",
        args: ["-c", "echo $GREETING; echo oops >&2; exit 3"],
        exit_code: 3,
        success: false,
        output: [
          { stream: "stdout", text: "hi" },
          { stream: "stderr", text: "oops" },
        ],
      });
      // A command past its timeout: 504 and -32010, by the server's one error table.
      const slow = await rpc("sandbox.command.run", { namespace: "team", sandbox: "py", command: "sleep", args: ["30"], timeout: 1 });
      expect(slow.status).toBe(504);
      expect(slow.body.error).toMatchObject({ code: -32010, data: { code: "MSB_TIMEOUT" } });
      const m = await rpc<MetricsResult>("sandbox.metrics.get", { namespace: "team" });
      expect(m.body.result?.sandboxes).toEqual([expect.objectContaining({ namespace: "team", name: "py", running: true })]);
      expect(m.body.result?.sandboxes[0]?.memory_usage).toBeGreaterThan(0);
      // The same name in another namespace, or under another key, is another sandbox: none.
      expect((await rpc("sandbox.command.run", { namespace: "other", sandbox: "py", command: "true" })).body.error?.code).toBe(-32004);
      expect((await rpc("sandbox.stop", { namespace: "team", sandbox: "py" }, OTHER)).body.error?.code).toBe(-32004);
      expect((await rpc("sandbox.metrics.get", {}, OTHER)).body.result).toEqual({ sandboxes: [] });
      expect(Sandbox.list().filter((s) => s.labels["msb.server/name"] === "py")).toHaveLength(1);
    } finally {
      expect((await rpc("sandbox.stop", { namespace: "team", sandbox: "py" })).body.result).toBe("Sandbox py stopped");
    }
    expect((await rpc("sandbox.metrics.get", {})).body.result).toEqual({ sandboxes: [] });
    expect(Sandbox.list().filter((s) => s.labels["msb.server/name"] === "py")).toHaveLength(0);
  });

  it("answers bad requests with their codes and keeps serving", async () => {
    const post = (body: string) => fetch(`${server.url}/api/v1/rpc`, { method: "POST", headers: { authorization: `Bearer ${KEY}` }, body });
    let r = await post("{not json");
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: RpcError }).error.code).toBe(-32700);
    r = await post(JSON.stringify({ jsonrpc: "1.0", id: 1, method: "x" }));
    expect(((await r.json()) as { error: RpcError }).error.code).toBe(-32600);
    expect((await rpc("sandbox.explode", {})).body.error?.code).toBe(-32601);
    expect((await rpc("sandbox.start", { sandbox: "" })).body.error?.code).toBe(-32602);
    expect((await rpc("sandbox.command.run", { sandbox: "nope", command: "true" })).body.error?.code).toBe(-32004);
    // A bad option is the client's mistake (400), an image that does not exist is a 404: neither
    // is a server failure (500), and neither boots anything.
    const bad = await rpc("sandbox.start", { sandbox: "w", config: { image: "local:busybox", workdir: "relative" } });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ code: -32602, data: { code: "MSB_INVALID_ARGUMENT" } });
    expect(bad.body.error?.message).toMatch(/workdir "relative"/);
    const missing = await rpc("sandbox.start", { sandbox: "w", config: { image: "local:no-such-image" } });
    expect(missing.status).toBe(404);
    expect(missing.body.error).toMatchObject({ code: -32004, data: { code: "MSB_IMAGE" } });
    r = await post("x".repeat(2 << 20));
    expect(r.status).toBe(413);
    expect((await fetch(`${server.url}/api/v1/nowhere`)).status).toBe(404);
    expect((await fetch(`${server.url}/api/v1/health`)).status).toBe(200);
  });

  it("answers 429 with Retry-After past its sandbox limit", async () => {
    const names = ["a", "b", "c"];
    const results = [];
    for (const n of names) results.push(await rpc("sandbox.start", { sandbox: n, config: { image: "local:busybox", memory: 128 } }));
    try {
      expect(results.slice(0, 2).map((r) => r.body.result)).toEqual(["Sandbox a started", "Sandbox b started"]);
      expect(results[2]!.status).toBe(429);
      expect(results[2]!.headers.get("retry-after")).toBe(String(SERVER_DEFAULTS.retryAfterS));
      expect(results[2]!.body.error?.code).toBe(-32005);
      // local:busybox is a CustomSandbox: it has no interpreter to run code in.
      const repl = await rpc("sandbox.repl.run", { sandbox: "a", language: "python", code: "1 + 1" });
      expect(repl.status).toBe(400);
      expect(repl.body.error).toMatchObject({ code: -32602, message: expect.stringMatching(/sandbox a is a CustomSandbox .* no python interpreter/) });
    } finally {
      for (const n of names) await rpc("sandbox.stop", { sandbox: n });
    }
  });

  it("refuses to listen beyond loopback without an API key", async () => {
    await expect(createServer({ host: "0.0.0.0", port: 0 })).rejects.toThrow(InvalidArgumentError);
  });
});
