// One sandbox is one sandbox whichever door it came through: msb ps lists what the server runs
// for a key (JSON-RPC and E2B alike) and msb kill stops it; a server that is closed, or killed
// outright, leaves no VM behind.
import { execFile, execFileSync, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

import { createServer } from "../../src/index.js";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const KEY = "admin-key";
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const until = async (ok: () => boolean, ms: number) => {
  for (const end = Date.now() + ms; !ok(); ) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return true;
};

describe("msb ps and msb kill against a server", () => {
  it("list both protocols' sandboxes, kill by id, and close() stops the rest", async () => {
    const server = await createServer({ port: 0, apiKeys: [KEY] });
    // Asynchronously: the server answering it runs in this process.
    const msb = (...args: string[]) =>
      new Promise<{ status: number; stdout: string; stderr: string }>((resolve) =>
        execFile(process.execPath, [MSB, ...args, "--server", server.url, "--api-key", KEY], { encoding: "utf8" }, (err, stdout, stderr) =>
          resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        ),
      );
    try {
      const rpc = await fetch(`${server.url}/api/v1/rpc`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}` },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "sandbox.start",
          params: { namespace: "ns", sandbox: "one", config: { image: "local:busybox", memory: 128 } },
        }),
      });
      expect(((await rpc.json()) as { result: string }).result).toBe("Sandbox one started");
      const e2b = (await (
        await fetch(`${server.url}/v2/sandboxes`, { method: "POST", headers: { "x-api-key": KEY }, body: JSON.stringify({ templateID: "base" }) })
      ).json()) as { sandboxID: string };
      const ps = await msb("ps");
      expect(ps.status).toBe(0);
      expect(ps.stdout).toMatch(/ns\/one/);
      expect(ps.stdout).toMatch(new RegExp(`${e2b.sandboxID}\\s+e2b base`));
      const listed = (await (await fetch(`${server.url}/api/v1/sandboxes`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as {
        id: string;
        pid: number;
        name: string;
      }[];
      const one = listed.find((s) => s.name === "one")!;
      expect((await msb("kill", one.id)).status).toBe(0);
      expect(await until(() => !alive(one.pid), 10_000)).toBe(true);
      expect((await msb("ps")).stdout).not.toMatch(/ns\/one/);
      expect((await msb("kill", one.id)).stderr).toMatch(/answered 404/);
      const e2bPid = listed.find((s) => s.id === e2b.sandboxID)!.pid;
      await server.close();
      expect(alive(e2bPid)).toBe(false);
    } finally {
      await server.close();
    }
  }, 180_000);

  it("leaves no VM behind when the server process is killed outright", async () => {
    const script = `
      const { createServer } = await import(${JSON.stringify(new URL("../../dist/index.js", import.meta.url).href)});
      const server = await createServer({ port: 0 });
      const r = await fetch(server.url + "/v2/sandboxes", { method: "POST", headers: { "x-api-key": "any" }, body: JSON.stringify({ templateID: "base" }) });
      const { sandboxID } = await r.json();
      const list = await (await fetch(server.url + "/api/v1/sandboxes")).json();
      console.log(JSON.stringify(list.find((s) => s.id === sandboxID)));`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    const line = await new Promise<string>((resolve) => child.stdout.once("data", (d: Buffer) => resolve(d.toString())));
    const { pid } = JSON.parse(line) as { pid: number };
    expect(alive(pid)).toBe(true);
    child.kill("SIGKILL");
    expect(await until(() => !alive(pid), 10_000)).toBe(true);
    // Nothing of that VM runs any more.
    expect(
      execFileSync("ps", ["-eo", "pid"], { encoding: "utf8" })
        .split("\n")
        .map((s) => s.trim()),
    ).not.toContain(String(pid));
  }, 120_000);
});
