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
  process.env.E2B_VOLUME_API_URL = server.url;
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
    await expect(Sandbox.create("base", { volumeMounts: { "/proc/x": vol } })).rejects.toThrow(/400: volume path "\/proc\/x" is invalid/);

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

describe("the E2B volume content API", () => {
  it("writes, reads, lists, stats, changes and removes a volume's files, which a sandbox then sees", async () => {
    const { Sandbox, Volume, VolumePathNotFoundError, AuthenticationError } = e2b;
    const vol = await Volume.create(`files-${RUN}`);
    await expect(vol.writeFile("/docs/a.txt", "no parent yet")).rejects.toBeInstanceOf(VolumePathNotFoundError);
    expect(await vol.makeDir("/docs")).toMatchObject({ name: "docs", path: "/docs", type: "directory" });
    await expect(vol.makeDir("/docs")).rejects.toThrow(/409: \/docs already exists/);
    expect(await vol.makeDir("/deep/er/dir", { force: true })).toMatchObject({ path: "/deep/er/dir", type: "directory" });
    const written = await vol.writeFile("/docs/a.txt", "hello volume", { mode: 0o600 });
    expect(written).toMatchObject({ name: "a.txt", path: "/docs/a.txt", type: "file", size: 12, mode: 0o600, uid: 0 });
    expect(written.mtime.getTime()).toBeGreaterThan(Date.now() - 120_000);
    const bytes = new Uint8Array([0, 255, 1, 254, 10]);
    await vol.writeFile("bin", bytes.buffer);
    expect(await vol.readFile("/bin", { format: "bytes" })).toEqual(bytes);
    expect(await vol.readFile("/docs/a.txt")).toBe("hello volume");
    expect((await vol.list("/")).map((e) => e.path).sort()).toEqual(["/bin", "/deep", "/docs", "/lost+found"]);
    expect((await vol.list("/docs", { depth: 2 })).map((e) => e.path)).toEqual(["/docs/a.txt"]);
    expect((await vol.list("/", { depth: 3 })).map((e) => e.path)).toContain("/deep/er/dir");
    expect(await vol.exists("/docs/nope")).toBe(false);
    expect(await vol.updateMetadata("/docs/a.txt", { uid: 1000, gid: 1001, mode: 0o640 })).toMatchObject({ uid: 1000, gid: 1001, mode: 0o640 });
    await expect(vol.readFile("/../etc/passwd")).rejects.toThrow(/400: path .* may not contain/);
    const forged = new Volume(vol.volumeId, vol.name, "not-the-token");
    await expect(forged.readFile("/docs/a.txt")).rejects.toBeInstanceOf(AuthenticationError);

    const sb = await Sandbox.create("base", { volumeMounts: { "/v": vol } });
    try {
      expect((await sb.commands.run("cat /v/docs/a.txt; stat -c '%u %g %a' /v/docs/a.txt")).stdout).toBe("hello volume1000 1001 640\n");
      // Mounted in a sandbox, its files are reached there.
      await expect(vol.readFile("/docs/a.txt")).rejects.toThrow(new RegExp(`409: volume files-${RUN} is mounted in a sandbox:`));
    } finally {
      await sb.kill();
    }
    await vol.remove("/docs");
    expect(await vol.exists("/docs/a.txt")).toBe(false);
    await expect(vol.remove("/docs")).rejects.toBeInstanceOf(VolumePathNotFoundError);
    expect(await Volume.destroy(vol.volumeId)).toBe(true);
    // Nothing left running: each call's helper sandbox is stopped after it.
    expect(server.table.everyone()).toEqual([]);
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
