// msb server's E2B volumes, logs and metrics against the real e2b 2.51 SDK, unmodified: volumes
// that outlive sandboxes and stay with their key, the sandbox log routes, metrics for several
// sandboxes, and envd's /envs and /metrics. What the SDK has no call for is fetched as it would be.

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createServer, listVolumes, type RunningServer } from "../../src/index.js";

let server: RunningServer;
const KEY = "e2b-volumes-key";
const OTHER = "e2b-volumes-other";
const RUN = Date.now().toString(36);

type SdkModule = typeof import("e2b-251");
let e2b: SdkModule;

beforeAll(async () => {
  server = await createServer({ port: 0, apiKeys: [KEY, OTHER], maxSandboxes: 4 });
  Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  e2b = (await import("e2b-251")) as unknown as SdkModule;
});
afterAll(async () => {
  // Nothing left behind: this run's volumes, whichever test made them.
  for (const apiKey of [KEY, OTHER]) {
    for (const v of await e2b.Volume.list({ apiKey }).catch(() => [])) if (v.name.endsWith(RUN)) await e2b.Volume.destroy(v.volumeId, { apiKey });
  }
  await server?.close();
});

const api = (path: string, key = KEY) => fetch(`${server.url}${path}`, { headers: { "x-api-key": key } });

describe("E2B volumes", () => {
  it("outlive two sandboxes, stay with their key, and are not destroyed while mounted", async () => {
    const { Sandbox, Volume, VolumeNotFoundError } = e2b;
    const name = `data-${RUN}`;
    const vol = await Volume.create(name);
    expect(vol.name).toBe(name);
    await expect(Volume.create(name)).rejects.toThrow(/409: volume .* already exists/);
    await expect(Volume.create("Not/A/Name")).rejects.toThrow(/400: volume name "Not\/A\/Name" is invalid/);

    const first = await Sandbox.create("base", { volumeMounts: { "/data": vol } });
    try {
      expect((await first.getInfo()).volumeMounts).toEqual([{ name, path: "/data" }]);
      await first.commands.run("mkdir -p /data/notes && echo 'written by the first' > /data/notes/a.txt");
      await expect(Volume.destroy(vol.volumeId)).rejects.toThrow(new RegExp(`409: volume ${name} is mounted in sandbox ${first.sandboxId}`));
    } finally {
      await first.kill();
    }

    // Another key sees no such volume, and cannot mount it by name.
    expect((await Volume.list({ apiKey: OTHER })).map((v) => v.name)).not.toContain(name);
    await expect(Volume.getInfo(vol.volumeId, { apiKey: OTHER })).rejects.toBeInstanceOf(VolumeNotFoundError);
    expect(await Volume.destroy(vol.volumeId, { apiKey: OTHER })).toBe(false);
    await expect(Sandbox.create("base", { apiKey: OTHER, volumeMounts: { "/data": name } })).rejects.toThrow(/404: volume .* not found/);
    // Its own volume of the same name is another volume.
    const theirs = await Volume.create(name, { apiKey: OTHER });
    expect(theirs.volumeId).not.toBe(vol.volumeId);

    const second = await Sandbox.create("base", { volumeMounts: { "/mnt/vol": name } });
    try {
      expect(await second.files.read("/mnt/vol/notes/a.txt")).toBe("written by the first\n");
    } finally {
      await second.kill();
    }

    expect(await Volume.list()).toContainEqual({ volumeId: vol.volumeId, name });
    const info = await Volume.getInfo(vol.volumeId);
    expect(info).toMatchObject({ volumeId: vol.volumeId, name });
    expect(info.token).toBe(vol.token);
    expect(await Volume.destroy(vol.volumeId)).toBe(true);
    expect(await Volume.destroy(vol.volumeId)).toBe(false);
    expect((await Volume.list()).map((v) => v.name)).not.toContain(name);
    expect(await Volume.getInfo(theirs.volumeId, { apiKey: OTHER })).toMatchObject({ name });
    expect(await Volume.destroy(theirs.volumeId, { apiKey: OTHER })).toBe(true);
    expect(listVolumes().filter((v) => v.name.endsWith(name))).toEqual([]);
  }, 240_000);
});

describe("sandbox logs, metrics, and envd's /envs and /metrics", () => {
  it("shows a command's output and events, measures two sandboxes, and tells the env and the guest's use", async () => {
    const { Sandbox } = e2b;
    const [a, b] = await Promise.all([Sandbox.create("base", { envs: { GREETING: "hello from create" } }), Sandbox.create("base")]);
    try {
      await a.commands.run("echo to-stdout-1; echo to-stdout-2; echo to-stderr >&2");

      const v2 = (await (await api(`/v2/sandboxes/${a.sandboxId}/logs`)).json()) as {
        logs: { timestamp: string; level: string; message: string; fields: Record<string, string> }[];
      };
      const mine = v2.logs.filter((l) => l.fields.command !== undefined);
      expect(mine.map((l) => [l.level, l.message, l.fields.source])).toEqual(
        expect.arrayContaining([
          ["info", "to-stdout-1", "stdout"],
          ["info", "to-stdout-2", "stdout"],
          ["error", "to-stderr", "stderr"],
          ["info", "exited with 0", "event"],
        ]),
      );
      expect(Date.parse(mine[0]!.timestamp)).toBeGreaterThan(Date.now() - 120_000);
      const errors = (await (await api(`/v2/sandboxes/${a.sandboxId}/logs?level=error&search=to-`)).json()) as { logs: { message: string }[] };
      expect(errors.logs.map((l) => l.message)).toEqual(["to-stderr"]);
      const newest = (await (await api(`/v2/sandboxes/${a.sandboxId}/logs?direction=backward&limit=1`)).json()) as { logs: { message: string }[] };
      expect(newest.logs.map((l) => l.message)).toEqual(["exited with 0"]);
      const v1 = (await (await api(`/sandboxes/${a.sandboxId}/logs?start=${Date.parse(mine[0]!.timestamp)}`)).json()) as {
        logs: { line: string }[];
        logEntries: { message: string }[];
      };
      expect(v1.logs.map((l) => l.line)).toContain("to-stdout-2");
      expect(v1.logEntries.map((l) => l.message)).toContain("to-stderr");
      expect((await api(`/v2/sandboxes/${a.sandboxId}/logs?direction=sideways`)).status).toBe(400);
      expect((await api(`/v2/sandboxes/${a.sandboxId}/logs`, OTHER)).status).toBe(404);

      const both = (await (await api(`/sandboxes/metrics?sandbox_ids=${a.sandboxId},${b.sandboxId}`)).json()) as {
        sandboxes: Record<string, { cpuCount: number; memUsed: number; memTotal: number; diskUsed: number; diskTotal: number }>;
      };
      expect(Object.keys(both.sandboxes).sort()).toEqual([a.sandboxId, b.sandboxId].sort());
      for (const m of Object.values(both.sandboxes)) {
        expect(m.cpuCount).toBeGreaterThanOrEqual(1);
        expect(m.memUsed).toBeGreaterThan(0);
        expect(m.memUsed).toBeLessThan(m.memTotal);
        expect(m.diskUsed).toBeLessThanOrEqual(m.diskTotal);
      }
      expect(await (await api(`/sandboxes/metrics?sandbox_ids=${a.sandboxId}`, OTHER)).json()).toEqual({ sandboxes: {} });
      expect((await api("/sandboxes/metrics")).status).toBe(400);

      // envd's own routes, reached as the SDK reaches envd: E2b-Sandbox-Id and the sandbox's token.
      const { envdAccessToken } = (await (await api(`/sandboxes/${a.sandboxId}`)).json()) as { envdAccessToken: string };
      const envd = (path: string, token = envdAccessToken) =>
        fetch(`${server.url}${path}`, { headers: { "e2b-sandbox-id": a.sandboxId, "e2b-sandbox-port": "49983", "x-access-token": token } });
      const envs = (await (await envd("/envs")).json()) as Record<string, string>;
      expect(envs.GREETING).toBe("hello from create");
      expect(envs.PATH).toContain("/usr/bin");
      expect((await a.commands.run("echo $GREETING")).stdout).toBe(`${envs.GREETING}\n`);
      expect((await envd("/envs", "wrong")).status).toBe(401);

      await a.commands.run("head -c 20000000 /dev/zero > /root/filler");
      const m = (await (await envd("/metrics")).json()) as Record<string, number>;
      expect(m.cpu_count).toBeGreaterThanOrEqual(1);
      expect(m.cpu_used_pct).toBeGreaterThanOrEqual(0);
      expect(m.cpu_used_pct).toBeLessThanOrEqual(100);
      // 512 MiB is the server's default sandbox memory; the guest's kernel keeps some for itself.
      expect(m.mem_total_mib).toBeGreaterThan(300);
      expect(m.mem_total_mib).toBeLessThanOrEqual(512);
      expect(m.mem_used).toBeGreaterThan(0);
      expect(m.mem_used).toBeLessThan(m.mem_total!);
      expect(m.mem_used_mib).toBe(Math.floor(m.mem_used! / 2 ** 20));
      expect(m.disk_used).toBeGreaterThanOrEqual(20_000_000);
      expect(m.disk_used).toBeLessThan(m.disk_total!);
      expect(Math.abs(m.ts! - Date.now() / 1000)).toBeLessThan(60);
    } finally {
      await Promise.all([a.kill(), b.kill()]);
    }
  }, 240_000);
});
