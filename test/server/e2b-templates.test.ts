// The E2B SDK's Template builder against msb server (e2b 2.51, unmodified): Template.build of a
// template made from the server's Python template with a command and a copied file, sandboxes
// of it (and the code interpreter), the builder's cache on a second build, a failing step, steps
// refused by name, templates kept across a server restart; and the upload API by hand (tokens,
// archives that leave their root or hold links, files that are not what their hash says).
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createServer, type RunningServer } from "../../src/index.js";

let server: RunningServer;
const KEY = "templates-test-key";
const OTHER = "templates-other-key";
type SdkModule = typeof import("e2b-251");
let e2b: SdkModule;
let context: string;
const names: string[] = [];
const uploads = () => readdirSync(os.tmpdir()).filter((f) => f.startsWith("msb-e2b-template-"));

const unique = (what: string) => {
  const name = `${what}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  names.push(name);
  return name;
};

beforeAll(async () => {
  server = await createServer({ port: 0, apiKeys: [KEY, OTHER], maxSandboxes: 3 });
  Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  e2b = (await import("e2b-251")) as unknown as SdkModule;
  context = mkdtempSync(path.join(os.tmpdir(), "tpl-context-"));
  writeFileSync(path.join(context, "greeting.txt"), "hello from the host\n");
});

afterAll(async () => {
  for (const name of names) await e2b?.Sandbox.deleteSnapshot(name).catch(() => {});
  await server?.close();
  rmSync(context, { recursive: true, force: true });
});

// The template of the first test: the server's Python template, a command, a copy, an environment,
// a workdir, and a start command whose ready command waits for what it makes.
const pythonTemplate = () =>
  e2b
    .Template({ fileContextPath: context })
    .fromTemplate("code-interpreter-v1")
    .runCmd("echo built > /opt/made.txt")
    .runCmd("mkdir -m 777 /opt/shared")
    .runCmd("id -un > /opt/shared/who", { user: "nobody" })
    .copy("greeting.txt", "/opt/greeting.txt")
    .setEnvs({ GREETING: "hi" })
    .setWorkdir("/opt")
    .setStartCmd("sleep 1; echo started > /tmp/up; exec sleep 100000", e2b.waitForFile("/tmp/up"));

describe("Template.build", () => {
  const name = unique("py");
  let firstMs = 0;

  it("builds from the Python template; its sandboxes have the command's file and the copied one, run the start command and run code", async () => {
    const { Template, Sandbox } = e2b;
    const logs: string[] = [];
    const t0 = performance.now();
    // skipCache: every step runs (and goes into the builder's cache), whatever earlier runs left there.
    const info = await Template.build(pythonTemplate(), name, { skipCache: true, onBuildLogs: (e) => void logs.push(e.message) });
    firstMs = performance.now() - t0;
    console.log(`first build: ${Math.round(firstMs)} ms, ${logs.length} log lines`);
    expect(info).toMatchObject({ name, tags: ["default"] });
    expect(logs).toContain("RUN echo built > /opt/made.txt"); // the steps as the server ran them
    expect(logs).toContain("COPY greeting.txt /opt/greeting.txt");
    expect(logs.find((l) => l.startsWith(`Built ${name}`))).toMatch(/: 8 steps, 0 from the cache/);
    expect(logs.at(-1)).toBe("Build finished");
    expect(await Template.exists(name)).toBe(true);
    expect(await Template.exists(name, { apiKey: OTHER })).toBe(false); // another key's templates are not its own
    expect((await Template.getTags(name)).map((t) => t.tag)).toEqual(["default"]);
    expect(uploads()).toEqual([]); // the uploaded files went with the build

    const t1 = performance.now();
    const sb = await Sandbox.create(name);
    try {
      console.log(`create with a ready command: ${Math.round(performance.now() - t1)} ms`);
      // Ready only once the start command made its file.
      expect(await sb.files.read("/tmp/up")).toBe("started\n");
      expect((await sb.commands.list()).some((p) => p.args.join(" ").includes("echo started"))).toBe(true);
      expect((await sb.commands.run("cat /opt/made.txt; cat greeting.txt; echo $GREETING; pwd")).stdout).toBe("built\nhello from the host\nhi\n/opt\n");
      // The command run as nobody ran as nobody, and the user after it is the base's again.
      expect((await sb.commands.run("cat /opt/shared/who; id -un")).stdout).toBe("nobody\nroot\n");
    } finally {
      await sb.kill();
    }

    // A Python template's kind is kept: the code interpreter runs in sandboxes of it.
    const ci = await import("@e2b/code-interpreter");
    const cs = await ci.Sandbox.create(name);
    try {
      const run = await cs.runCode("open('/opt/greeting.txt').read().strip() + '!'");
      expect(run.text).toBe("'hello from the host!'");
    } finally {
      await cs.kill();
    }
  }, 600_000);

  it("builds the same template again from the builder's cache, faster, under a new tag", async () => {
    const { Template } = e2b;
    expect(firstMs).toBeGreaterThan(0);
    const logs: string[] = [];
    const t0 = performance.now();
    const info = await Template.build(pythonTemplate(), `${name}:v2`, { onBuildLogs: (e) => void logs.push(e.message) });
    const ms = performance.now() - t0;
    console.log(`second build: ${Math.round(ms)} ms (first ${Math.round(firstMs)} ms)`);
    expect(info.tags).toEqual(["v2"]);
    const summary = logs.find((l) => l.startsWith(`Built ${name}`));
    const [, steps, cached] = /: (\d+) steps, (\d+) from the cache/.exec(summary ?? "") ?? [];
    expect(Number(steps)).toBeGreaterThan(0);
    expect(cached).toBe(steps);
    expect(logs).toContain("CACHED RUN echo built > /opt/made.txt");
    expect(ms).toBeLessThan(firstMs);
    expect((await Template.getTags(name)).map((t) => t.tag).sort()).toEqual(["default", "v2"]);
  }, 600_000);

  it("is still known after the server restarts", async () => {
    await server.close();
    server = await createServer({ port: 0, apiKeys: [KEY, OTHER], maxSandboxes: 3 });
    Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url });
    expect(await e2b.Template.exists(name)).toBe(true);
    expect((await e2b.Template.getTags(name)).map((t) => t.tag).sort()).toEqual(["default", "v2"]);
  }, 120_000);
});

describe("Template.build from an image", () => {
  it("makes a CustomSandbox: commands and files, no code interpreter", async () => {
    const { Template, Sandbox } = e2b;
    const name = unique("img");
    await Template.build(Template().fromImage("local:busybox").runCmd("echo from busybox > /made").setUser("root"), name);
    const sb = await Sandbox.create(name);
    try {
      expect((await sb.commands.run("cat /made")).stdout).toBe("from busybox\n");
    } finally {
      await sb.kill();
    }
    const ci = await import("@e2b/code-interpreter");
    const cs = await ci.Sandbox.create(name);
    try {
      await expect(cs.runCode("1")).rejects.toThrow(/400/); // the SDK shows only the status
    } finally {
      await cs.kill();
    }
  }, 300_000);
});

describe("a template build that fails", () => {
  it("a failing command: the SDK throws a BuildError naming it, the logs show its output, and no template is left", async () => {
    const { Template, BuildError } = e2b;
    const name = unique("bad");
    const logs: { level: string; message: string }[] = [];
    const template = Template().fromTemplate("base").runCmd("echo about to fail; exit 7");
    const err = await Template.build(template, name, { onBuildLogs: (e) => void logs.push({ level: e.level, message: e.message }) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BuildError);
    expect((err as Error).message).toBe("step 1 (RUN echo about to fail; exit 7) exited with 7");
    expect(logs.some((l) => l.message === "about to fail")).toBe(true);
    expect(logs.some((l) => l.level === "error" && /7/.test(l.message))).toBe(true);
    expect(await Template.exists(name)).toBe(false);
    expect(uploads()).toEqual([]);
  }, 300_000);

  it("refuses by name what it does not build, before building anything", async () => {
    const { Template, BuildError } = e2b;
    const name = unique("refused");
    const withCredentials = Template().fromImage("python:3.12", { username: "u", password: "p" }).runCmd("true");
    await expect(Template.build(withCredentials, name)).rejects.toThrow(/fromImageRegistry/);
    const glob = Template({ fileContextPath: context }).fromTemplate("base").copy("*.txt", "/opt/");
    const err = await Template.build(glob, name).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BuildError);
    expect((err as Error).message).toMatch(/glob/);
    await expect(Template.build(Template().fromTemplate("base"), "base")).rejects.toThrow(/server's own templates/);
    // A build's VM takes room as a sandbox does: past the server's memory budget, it is refused.
    await expect(Template.build(Template().fromTemplate("base").runCmd("true"), name, { memoryMB: 1_000_000 })).rejects.toThrow(/memory budget/);
    expect(await Template.exists(name)).toBe(false);
  }, 60_000);
});

// A tar archive of `entries` (ustar headers written here, so it can hold what a tool would refuse to make).
function tar(entries: { name: string; type?: "0" | "2" | "5"; body?: string; link?: string }[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? "");
    const h = Buffer.alloc(512);
    const put = (s: string, at: number) => h.write(s, at, "ascii");
    put(e.name, 0);
    put("0000644\0", 100);
    put("0000000\0", 108);
    put("0000000\0", 116);
    put(`${body.length.toString(8).padStart(11, "0")}\0`, 124);
    put("00000000000\0", 136);
    put(e.type ?? "0", 156);
    put(e.link ?? "", 157);
    put("ustar\0", 257);
    put("00", 263);
    put("        ", 148);
    put(
      `${h
        .reduce((n, b) => n + b, 0)
        .toString(8)
        .padStart(6, "0")}\0 `,
      148,
    );
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  return Buffer.concat([...blocks, Buffer.alloc(1024)]);
}

describe("template file uploads", () => {
  it("are allowed by their link's token only, and refused when an entry leaves the upload or is a link", async () => {
    const api = (p: string, init: RequestInit = {}) => fetch(`${server.url}${p}`, { ...init, headers: { "x-api-key": KEY, ...init.headers } });
    const name = unique("upload");
    const requested = await api("/v3/templates", { method: "POST", body: JSON.stringify({ name }) });
    expect(requested.status).toBe(202);
    const { templateID } = (await requested.json()) as { templateID: string };
    const linkOf = async (hash: string) =>
      (await (await api(`/templates/${templateID}/files/${hash}`)).json()) as { present: boolean; url: string; headers: Record<string, string> };
    const put = (link: { url: string; headers: Record<string, string> }, body: Buffer, headers = link.headers) =>
      fetch(link.url, { method: "PUT", body, headers });

    const escaping = await linkOf("a".repeat(64));
    expect(new URL(escaping.url).host).toBe(new URL(server.url).host); // served by this server
    expect((await put(escaping, tar([{ name: "x", body: "x" }]), { "x-msb-upload-token": "wrong" })).status).toBe(403);
    const refused = await put(
      escaping,
      tar([
        { name: "ok.txt", body: "fine" },
        { name: "../../escaped.txt", body: "out" },
      ]),
    );
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { message: string }).message).toMatch(/leaves the upload's root/);

    const linked = await put(await linkOf("b".repeat(64)), tar([{ name: "passwd", type: "2", link: "/etc/passwd" }]));
    expect(linked.status).toBe(400);
    expect(((await linked.json()) as { message: string }).message).toMatch(/symlink.*resolveSymlinks/);
    expect((await api(`/templates/${templateID}/files/not-a-hash`)).status).toBe(400);

    // Files that are not what their hash says are refused when the build starts; so is a step type not built here.
    const good = "c".repeat(64);
    expect((await put(await linkOf(good), tar([{ name: "f.txt", body: "x" }]))).status).toBe(200);
    const { buildID } = (await (await api("/v3/templates", { method: "POST", body: JSON.stringify({ name }) })).json()) as { buildID: string };
    expect(uploads()).toEqual([]); // that build was replaced: its files are gone, and the new one has none
    const again = await linkOf(good);
    expect(again).toMatchObject({ present: false });
    const start = (id: string, body: unknown) => api(`/v2/templates/${templateID}/builds/${id}`, { method: "POST", body: JSON.stringify(body) });
    await put(again, tar([{ name: "f.txt", body: "x" }]));
    const copy = await start(buildID, { fromTemplate: "base", steps: [{ type: "COPY", args: ["f.txt", "/f.txt", "", ""], filesHash: good }] });
    expect(copy.status).toBe(400);
    expect(((await copy.json()) as { message: string }).message).toMatch(/do not match their hash/);
    const next = (await (await api("/v3/templates", { method: "POST", body: JSON.stringify({ name }) })).json()) as { buildID: string };
    const odd = await start(next.buildID, { fromTemplate: "base", steps: [{ type: "HEALTHCHECK", args: ["true"] }] });
    expect(odd.status).toBe(400);
    expect(((await odd.json()) as { message: string }).message).toMatch(/"HEALTHCHECK", which this server does not build/);
    expect(uploads()).toEqual([]);
  }, 60_000);
});
