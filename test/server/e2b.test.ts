// msb server against the real E2B SDKs, unmodified (devDependencies under aliases: e2b 2.51 and
// 2.49, @e2b/code-interpreter 2.8), with E2B_API_URL and E2B_SANDBOX_URL pointing at the server.

import { existsSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createServer, type RunningServer } from "../../src/index.js";
import { cacheDir } from "../../src/paths.js";
import { pausedDir } from "../../src/sandbox/paused.js";

let server: RunningServer;
const KEY = "e2b-test-key";

type SdkModule = typeof import("e2b-251");
let e251: SdkModule;
let e249: SdkModule;

beforeAll(async () => {
  server = await createServer({
    port: 0,
    apiKeys: [KEY, "another-key"],
    maxSandboxes: 4,
    // The same image twice: once said to be a PythonSandbox, once a bare string (a CustomSandbox).
    e2b: { templates: { "python-said": { image: "local:python", kind: "PythonSandbox" }, "python-unsaid": "local:python" } },
  });
  Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  e251 = (await import("e2b-251")) as unknown as SdkModule;
  e249 = (await import("e2b-249")) as unknown as SdkModule;
});
afterAll(() => server?.close());

describe("the e2b SDK", () => {
  for (const [version, sdk] of [
    ["2.51", () => e251],
    ["2.49", () => e249],
  ] as const) {
    it(`${version}: create, streaming commands, an exit error, files, timeout, list by metadata, kill`, async () => {
      const { Sandbox, CommandExitError } = sdk();
      const tag = `run-${version}-${Date.now()}`;
      const sb = await Sandbox.create("base", { metadata: { tag } });
      try {
        const chunks: string[] = [];
        const r = await sb.commands.run("echo hi; sleep 0.2; echo there", { onStdout: (d: string) => void chunks.push(d) });
        expect(r.exitCode).toBe(0);
        expect(r.stdout).toBe("hi\nthere\n");
        expect(chunks.join("")).toBe("hi\nthere\n");
        expect(chunks.length).toBeGreaterThanOrEqual(2); // streamed as it came, not at the end
        const err = await sb.commands.run("echo bad >&2; exit 3").catch((e: unknown) => e);
        expect(err).toBeInstanceOf(CommandExitError);
        expect(err).toMatchObject({ exitCode: 3, stderr: "bad\n" });

        await sb.files.write("/root/work/a.txt", "hello file");
        expect(await sb.files.read("/root/work/a.txt")).toBe("hello file");
        expect((await sb.files.list("/root/work")).map((e: { name: string }) => e.name)).toEqual(["a.txt"]);
        expect(await sb.files.exists("/root/work/nope")).toBe(false);

        await sb.setTimeout(120_000);
        const info = await sb.getInfo();
        expect(info.metadata).toEqual({ tag });
        expect(new Date(info.endAt).getTime()).toBeGreaterThan(Date.now() + 100_000);
        const listed = await Sandbox.list({ query: { metadata: { tag } } }).nextItems();
        expect(listed.map((s: { sandboxId: string }) => s.sandboxId)).toEqual([sb.sandboxId]);
      } finally {
        await sb.kill();
      }
      expect(await Sandbox.list({ query: { metadata: { tag } } }).nextItems()).toEqual([]);
    }, 180_000);
  }

  it("keeps two sandboxes apart, and another key sees neither", async () => {
    const { Sandbox } = e251;
    const [a, b] = [await Sandbox.create("base"), await Sandbox.create("base")];
    try {
      await a.files.write("/root/who", "a");
      await b.files.write("/root/who", "b");
      expect(await a.files.read("/root/who")).toBe("a");
      expect(await b.files.read("/root/who")).toBe("b");
      const theirs = await Sandbox.list({ apiKey: "another-key" }).nextItems();
      expect(theirs).toEqual([]);
      expect(await Sandbox.kill(a.sandboxId, { apiKey: "another-key" })).toBe(false);
    } finally {
      await a.kill();
      await b.kill();
    }
  }, 180_000);

  it("pauses a sandbox and brings it back with connect, files and running commands and all; killing a paused one leaves nothing", async () => {
    const { Sandbox } = e251;
    const other = await Sandbox.create("local:busybox");
    await other.pause();
    // Its saved state, and the server's record of it (for a server restarted on this cache).
    const saved = [pausedDir(`srv-${other.sandboxId}`), path.join(cacheDir(), "server-paused", `${other.sandboxId}.json`)];
    expect(saved.map((f) => existsSync(f))).toEqual([true, true]);
    expect(await Sandbox.kill(other.sandboxId)).toBe(true);
    expect(saved.map((f) => existsSync(f))).toEqual([false, false]);
    const sb = await Sandbox.create("base");
    try {
      await sb.files.write("/root/kept", "across a pause");
      // A command running in the background carries on through the pause, as E2B's do.
      const before: string[] = [];
      const counter = await sb.commands.run("i=0; while :; do echo $i; i=$((i+1)); sleep 0.2; done", {
        background: true,
        onStdout: (d) => void before.push(d),
      });
      const cat = await sb.commands.run("cat", { background: true, stdin: true });
      await expect.poll(() => before.join("").split("\n").length, { timeout: 10_000 }).toBeGreaterThan(3);
      await sb.pause();
      expect((await sb.getInfo()).state).toBe("paused");
      const seen = before.join("").split("\n").filter(Boolean).map(Number);
      const back = await Sandbox.connect(sb.sandboxId);
      expect(await back.files.read("/root/kept")).toBe("across a pause");
      expect((await back.commands.list()).map((p) => p.pid)).toContain(counter.pid);
      const after: string[] = [];
      const again = await back.commands.connect(counter.pid, { onStdout: (d) => void after.push(d) });
      await expect.poll(() => after.join("").split("\n").length, { timeout: 10_000 }).toBeGreaterThan(3);
      // It counts on from where it was (not from 0: the same process), a line at a time.
      const more = after.join("").split("\n").slice(0, 3).map(Number);
      expect(more[0]).toBeGreaterThan(seen.at(-1)!);
      expect(more).toEqual([more[0], more[0]! + 1, more[0]! + 2]);
      expect(await back.commands.kill(counter.pid)).toBe(true);
      expect(await again.wait().catch((e: { exitCode?: number }) => e)).toMatchObject({ exitCode: -1 });
      expect((await back.commands.list()).map((p) => p.pid)).not.toContain(counter.pid);
      // Its stdin is still open, and still its own.
      const echoed: string[] = [];
      const catAgain = await back.commands.connect(cat.pid, { onStdout: (d) => void echoed.push(d) });
      await back.commands.sendStdin(cat.pid, "after the pause\n");
      await expect.poll(() => echoed.join(""), { timeout: 10_000 }).toBe("after the pause\n");
      await back.commands.closeStdin(cat.pid);
      expect((await catAgain.wait()).exitCode).toBe(0);
      expect((await back.commands.run("echo alive")).stdout).toBe("alive\n");
    } finally {
      await sb.kill();
    }
  }, 180_000);

  it("kills a sandbox when its timeout passes", async () => {
    const { Sandbox } = e251;
    const sb = await Sandbox.create("base", { timeoutMs: 3_000 });
    await new Promise((r) => setTimeout(r, 4_500));
    expect(await sb.isRunning().catch(() => false)).toBe(false);
    expect(await Sandbox.kill(sb.sandboxId)).toBe(false);
  }, 60_000);
});

describe("@e2b/code-interpreter", () => {
  it("keeps state between runCode calls and reports results and errors", async () => {
    const { Sandbox } = await import("@e2b/code-interpreter");
    const sb = await Sandbox.create();
    try {
      const first = await sb.runCode("x = 1\nprint('set')");
      expect(first.logs.stdout.join("")).toBe("set\n");
      expect(first.results).toEqual([]);
      const second = await sb.runCode("x + 1");
      expect(second.text).toBe("2");
      const bad = await sb.runCode("1 / 0");
      expect(bad.error).toMatchObject({ name: "ZeroDivisionError", value: "division by zero" });
      expect(bad.error!.traceback).toMatch(/ZeroDivisionError/);
    } finally {
      await sb.kill();
    }
  }, 180_000);
});

describe("bad input to the E2B API", () => {
  it("answers with clear codes and keeps serving", async () => {
    const api = (path: string, init: RequestInit = {}) =>
      fetch(`${server.url}${path}`, { ...init, headers: { "x-api-key": KEY, "content-type": "application/json", ...init.headers } });
    expect((await api("/sandboxes/does-not-exist")).status).toBe(404);
    expect(((await (await api("/sandboxes/does-not-exist")).json()) as { code: number }).code).toBe(404);
    expect((await api("/v2/sandboxes", { method: "POST", body: "{broken" })).status).toBe(400);
    expect((await api("/v2/sandboxes", { method: "POST", body: "x".repeat(2 << 20) })).status).toBe(413);
    expect((await fetch(`${server.url}/v2/sandboxes`, { method: "POST", body: "{}" })).status).toBe(401);
    // Through the SDK: a bad option is the client's mistake (400), an image that does not exist is
    // a 404; neither is a server failure (500).
    const { Sandbox } = e251;
    const bad = await Sandbox.create("base", { envs: { "A=B": "x" } }).catch((e: unknown) => e);
    expect(bad).toMatchObject({ statusCode: 400, message: expect.stringMatching(/environment variable "A=B" is invalid/) });
    const missing = await Sandbox.create("local:no-such-image").catch((e: unknown) => e);
    expect(missing).toMatchObject({ statusCode: 404, message: expect.stringMatching(/local:no-such-image/) });
    // The data plane needs the sandbox's own token, and refuses paths with "..".
    const sb = await Sandbox.create("base");
    try {
      const dp = (path: string, token?: string) =>
        fetch(`${server.url}${path}`, {
          headers: { "e2b-sandbox-id": sb.sandboxId, "e2b-sandbox-port": "49983", ...(token ? { "x-access-token": token } : {}) },
        });
      expect((await dp("/files?path=/etc/hostname")).status).toBe(401);
      const token = (await (await api(`/sandboxes/${sb.sandboxId}`)).json()) as { envdAccessToken: string };
      expect((await dp("/files?path=/root/../etc/shadow", token.envdAccessToken)).status).toBe(400);
      expect((await dp("/files?path=/no/such/file", token.envdAccessToken)).status).toBe(404);
      expect((await dp("/health", token.envdAccessToken)).status).toBe(204);
    } finally {
      await sb.kill();
    }
    expect((await api("/v2/sandboxes")).status).toBe(200);
  }, 120_000);
});

describe("envd through the e2b SDK: processes and files", () => {
  it("runs in the background, lists, connects, takes stdin, and kills", async () => {
    const { Sandbox, NotFoundError } = e251;
    const sb = await Sandbox.create("base");
    try {
      const cat = await sb.commands.run("cat", { background: true, stdin: true });
      const listed = await sb.commands.list();
      expect(listed.map((p: { pid: number }) => p.pid)).toContain(cat.pid);
      const seen: string[] = [];
      const again = await sb.commands.connect(cat.pid, { onStdout: (d: string) => void seen.push(d) });
      await sb.commands.sendStdin(cat.pid, "echoed back\n");
      for (let i = 0; i < 100 && !seen.join("").includes("echoed back"); i++) await new Promise((r) => setTimeout(r, 100));
      expect(seen.join("")).toBe("echoed back\n");
      expect(await sb.commands.kill(cat.pid)).toBe(true);
      const end = await again.wait().catch((e: { exitCode?: number }) => e);
      expect(end).toMatchObject({ exitCode: -1 });
      // envd's failures, in a stream or not, get their Connect code from the server's one table.
      await expect(sb.commands.connect(999_999)).rejects.toBeInstanceOf(NotFoundError);
      await expect(sb.files.list("/root/no-such-dir")).rejects.toBeInstanceOf(NotFoundError);
    } finally {
      await sb.kill();
    }
  }, 120_000);

  it("makes, stats, renames, lists deeply, watches and removes", async () => {
    const { Sandbox, FileType } = e251;
    const sb = await Sandbox.create("base");
    try {
      expect(await sb.files.makeDir("/root/w/deep")).toBe(true);
      expect(await sb.files.makeDir("/root/w/deep")).toBe(false);
      const events: { name: string; type: string }[] = [];
      const watcher = await sb.files.watchDir("/root/w", (e: { name: string; type: string }) => void events.push(e), { recursive: true });
      await sb.files.write("/root/w/deep/f.txt", "x");
      await sb.files.rename("/root/w/deep/f.txt", "/root/w/g.txt");
      const info = await sb.files.getInfo("/root/w/g.txt");
      expect(info).toMatchObject({ name: "g.txt", type: FileType.FILE, size: 1, path: "/root/w/g.txt" });
      const all = (await sb.files.list("/root/w", { depth: 2 })).map((e: { path: string }) => e.path).sort();
      expect(all).toEqual(["/root/w/deep", "/root/w/g.txt"]);
      await sb.files.remove("/root/w/deep");
      expect(await sb.files.exists("/root/w/deep")).toBe(false);
      for (let i = 0; i < 100 && !events.some((e) => e.type === "remove" && e.name === "deep"); i++) await new Promise((r) => setTimeout(r, 100));
      await watcher.stop();
      const names = events.map((e) => `${e.type} ${e.name}`);
      // Writes are atomic (a temporary file renamed into place): the file arrives by a rename.
      expect(names).toContain("rename deep/f.txt");
      expect(names).toContain("rename g.txt");
      expect(names).toContain("remove deep");
    } finally {
      await sb.kill();
    }
  }, 120_000);

  it("runs a terminal: output, input, resize", async () => {
    const { Sandbox } = e251;
    const sb = await Sandbox.create("base");
    try {
      let screen = "";
      const term = await sb.pty.create({
        cols: 80,
        rows: 24,
        onData: (d: Uint8Array) => {
          screen += Buffer.from(d).toString();
        },
      });
      await sb.pty.sendInput(term.pid, new TextEncoder().encode("stty size\n"));
      for (let i = 0; i < 100 && !/24 80/.test(screen); i++) await new Promise((r) => setTimeout(r, 100));
      expect(screen).toMatch(/24 80/);
      await sb.pty.resize(term.pid, { cols: 100, rows: 30 });
      await sb.pty.sendInput(term.pid, new TextEncoder().encode("stty size\n"));
      for (let i = 0; i < 100 && !/30 100/.test(screen); i++) await new Promise((r) => setTimeout(r, 100));
      expect(screen).toMatch(/30 100/);
      await sb.pty.sendInput(term.pid, new TextEncoder().encode("exit\n"));
      expect((await term.wait()).exitCode).toBe(0);
    } finally {
      await sb.kill();
    }
  }, 120_000);
});

describe("the code interpreter and the template's kind", () => {
  it("runs code where the template's kind has an interpreter, and answers 400 where it has none", async () => {
    const { Sandbox } = await import("@e2b/code-interpreter");
    const said = await Sandbox.create("python-said");
    try {
      expect((await said.runCode("6 * 7")).text).toBe("42");
    } finally {
      await said.kill();
    }
    // The kind comes from the table, never from the image's name.
    const unsaid = await Sandbox.create("python-unsaid");
    try {
      await expect(unsaid.runCode("6 * 7")).rejects.toThrow(/^400/);
      const { envdAccessToken } = (await (await fetch(`${server.url}/sandboxes/${unsaid.sandboxId}`, { headers: { "x-api-key": KEY } })).json()) as {
        envdAccessToken: string;
      };
      const res = await fetch(`${server.url}/execute`, {
        method: "POST",
        headers: { "e2b-sandbox-id": unsaid.sandboxId, "e2b-sandbox-port": "49999", "x-access-token": envdAccessToken },
        body: JSON.stringify({ code: "6 * 7" }),
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { message: string }).message).toMatch(/is a CustomSandbox \(from "python-unsaid"\), which has no python interpreter/);
    } finally {
      await unsaid.kill();
    }
  }, 120_000);
});

describe("@e2b/code-interpreter contexts", () => {
  it("keeps each context's state its own", async () => {
    const { Sandbox } = await import("@e2b/code-interpreter");
    const sb = await Sandbox.create();
    try {
      const a = await sb.createCodeContext({ cwd: "/tmp/a" });
      const b = await sb.createCodeContext();
      await sb.runCode("v = 'in a'", { context: a });
      await sb.runCode("v = 'in b'", { context: b });
      expect((await sb.runCode("v", { context: a })).text).toBe("'in a'");
      expect((await sb.runCode("import os; os.getcwd()", { context: a })).text).toBe("'/tmp/a'");
      expect((await sb.runCode("v", { context: b })).text).toBe("'in b'");
      expect((await sb.listCodeContexts()).map((c: { id: string }) => c.id).sort()).toEqual([a.id, b.id].sort());
      await sb.removeCodeContext(a);
      expect((await sb.listCodeContexts()).map((c: { id: string }) => c.id)).toEqual([b.id]);
    } finally {
      await sb.kill();
    }
  }, 120_000);
});

// POST /execute as the SDK does; the SDK's own error says only "400 Bad Request".
async function execute(sandboxId: string, body: object): Promise<{ status: number; message?: string }> {
  const { envdAccessToken } = (await (await fetch(`${server.url}/sandboxes/${sandboxId}`, { headers: { "x-api-key": KEY } })).json()) as {
    envdAccessToken: string;
  };
  const res = await fetch(`${server.url}/execute`, {
    method: "POST",
    headers: { "e2b-sandbox-id": sandboxId, "e2b-sandbox-port": "49999", "x-access-token": envdAccessToken },
    body: JSON.stringify(body),
  });
  return res.status === 200 ? { status: 200 } : { status: res.status, message: ((await res.json()) as { message: string }).message };
}

describe("@e2b/code-interpreter languages", () => {
  it("runs js and bash, each language's default and each context an interpreter of its own", async () => {
    const { Sandbox } = await import("@e2b/code-interpreter");
    // Node's image: node and bash, no python.
    const sb = await Sandbox.create("microsandbox/node");
    try {
      expect((await sb.runCode("let n = 20", { language: "js" })).results).toEqual([]);
      const js = await sb.runCode("console.log('hi'); n * 2 + 2", { language: "js" });
      expect(js.text).toBe("42");
      expect(js.logs.stdout.join("")).toBe("hi\n");
      const thrown = await sb.runCode("null.x", { language: "javascript" });
      expect(thrown.error).toMatchObject({ name: "TypeError" });

      await sb.runCode("v=kept; mkdir -p /tmp/w && cd /tmp/w", { language: "bash" });
      const sh = await sb.runCode('echo "$v in $PWD"; echo warn >&2', { language: "bash" });
      expect(sh.logs.stdout.join("")).toBe("kept in /tmp/w\n");
      expect(sh.logs.stderr.join("")).toBe("warn\n");
      expect(sh.error).toBeUndefined();
      const failed = await sb.runCode("ls /nonexistent", { language: "bash" });
      expect(failed.error).toMatchObject({ name: "ExitCode", value: "exit status 2" });
      expect(failed.logs.stderr.join("")).toMatch(/nonexistent/);

      // A context per language, apart from the default one.
      const jsCtx = await sb.createCodeContext({ language: "js", cwd: "/tmp/c" });
      expect(jsCtx.language).toBe("js");
      expect((await sb.runCode("typeof n", { context: jsCtx })).text).toBe("'undefined'");
      expect((await sb.runCode("process.cwd()", { context: jsCtx })).text).toBe("'/tmp/c'");
      const shCtx = await sb.createCodeContext({ language: "bash" });
      expect((await sb.runCode('echo "[$v]"; pwd', { context: shCtx })).logs.stdout.join("")).toBe("[]\n/root\n");
      expect((await sb.runCode("n", { language: "js" })).text).toBe("20");

      // The image has no python: said, not hung.
      await expect(sb.runCode("1 + 1")).rejects.toThrow(/^400/);
      expect((await execute(sb.sandboxId, { code: "1 + 1" })).message).toMatch(
        /the python interpreter needs python3, which the image of sandbox .* \(from "microsandbox\/node"\) does not have: .*microsandbox\/python/,
      );
    } finally {
      await sb.kill();
    }
  }, 240_000);

  it("keeps python the default, and refuses a language it does not serve or an image lacks", async () => {
    const { Sandbox } = await import("@e2b/code-interpreter");
    const sb = await Sandbox.create();
    try {
      expect((await sb.runCode("x = 6")).results).toEqual([]);
      expect((await sb.runCode("x * 7", { language: "python" })).text).toBe("42");
      expect((await sb.runCode("echo $((6 * 7))", { language: "bash" })).logs.stdout).toEqual(["42\n"]);
      await expect(sb.runCode("1", { language: "js" })).rejects.toThrow(/^400/);
      expect((await execute(sb.sandboxId, { code: "1", language: "js" })).message).toMatch(/the javascript interpreter needs node, .*microsandbox\/node/);
      expect(await execute(sb.sandboxId, { code: "1", language: "ts" })).toMatchObject({
        status: 400,
        message: expect.stringMatching(/language "ts" is not served.*TypeScript/),
      });
      expect(await execute(sb.sandboxId, { code: "1", language: "cobol" })).toMatchObject({
        status: 400,
        message: expect.stringMatching(/language "cobol" is not served.*python, js \(javascript\) and bash/),
      });
      await expect(sb.createCodeContext({ language: "cobol" })).rejects.toThrow(/^400/);
      expect((await sb.runCode("x")).text).toBe("6");
    } finally {
      await sb.kill();
    }
  }, 180_000);
});

describe("presigned file URLs", () => {
  it("download and upload through signed URLs; a tampered or expired one is refused", async () => {
    const { Sandbox } = e251;
    const sb = await Sandbox.create("base");
    try {
      await sb.files.write("/root/shared.txt", "signed content");
      const down = await sb.downloadUrl("/root/shared.txt");
      expect(new URL(down).searchParams.get("signature")).toMatch(/^v1_/);
      expect(await (await fetch(down)).text()).toBe("signed content");
      const form = new FormData();
      form.append("file", new Blob(["uploaded by URL"]), "up.txt");
      const up = await sb.uploadUrl("/root/up.txt");
      expect((await fetch(up, { method: "POST", body: form })).status).toBe(200);
      expect(await sb.files.read("/root/up.txt")).toBe("uploaded by URL");
      // A signature for reading does not write, and one for another path does not read.
      expect((await fetch(down, { method: "POST", body: form })).status).toBe(403);
      expect((await fetch(down.replace("shared.txt", "up.txt"))).status).toBe(403);
      const expired = await sb.downloadUrl("/root/shared.txt", { useSignatureExpiration: -10 });
      expect((await fetch(expired)).status).toBe(403);
    } finally {
      await sb.kill();
    }
  }, 120_000);
});

describe("getHost(port)", () => {
  it("reaches a server in the guest through PORT-ID.DOMAIN on the server's port", async () => {
    const { Sandbox } = e251;
    const http = await import("node:http");
    const sb = await Sandbox.create("local:busybox");
    try {
      await sb.commands.run("mkdir -p /www && echo served-by-guest > /www/index.html && busybox httpd -f -p 8080 -h /www", { background: true });
      const get = (host: string) =>
        new Promise<{ status: number; body: string }>((resolve, reject) =>
          http
            .get({ host: "127.0.0.1", port: server.port, path: "/index.html", headers: { host } }, (res) => {
              let body = "";
              res.on("data", (c: Buffer) => (body += c));
              res.on("end", () => resolve({ status: res.statusCode!, body }));
            })
            .on("error", reject),
        );
      const host = sb.getHost(8080);
      expect(host).toBe(`8080-${sb.sandboxId}.localhost`);
      let got = await get(host);
      for (let i = 0; i < 20 && got.status !== 200; i++) {
        await new Promise((r) => setTimeout(r, 250)); // httpd starting
        got = await get(host);
      }
      expect(got).toEqual({ status: 200, body: "served-by-guest\n" });
      expect((await get(`8081-${sb.sandboxId}.localhost`)).status).toBe(502);
      expect((await get("8080-0000000000000000.localhost")).status).toBe(502);
    } finally {
      await sb.kill();
    }
  }, 120_000);
});
