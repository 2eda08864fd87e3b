// Persistent volumes on real VMs: written by one sandbox in one host process, read by another
// sandbox in another; one writer at a time; read-only mounts; nosuid and nodev; msb volume.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

import { CustomSandbox, InvalidArgumentError, listVolumes, removeVolume, SnapshotUnsupportedError, VolumeBusyError } from "../../src/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const name = `vol-${randomBytes(3).toString("hex")}`;
const box = (volumes: { name: string; path: string; readOnly?: boolean }[]) => CustomSandbox.create({ image: "local:busybox", memory: 128, volumes });

afterAll(async () => {
  await removeVolume(name).catch(() => {});
});

describe("volumes", () => {
  it("keeps what one sandbox in another host process wrote for the next, mounted nosuid,nodev", async () => {
    const w = spawnSync(process.execPath, [path.join(here, "volumes", "writer.mjs"), name, "written elsewhere"], { encoding: "utf8", timeout: 150_000 });
    expect(w.stderr).toBe("");
    expect(w.status).toBe(0);
    expect(listVolumes().find((v) => v.name === name)).toMatchObject({ sizeBytes: 64 * 2 ** 20, users: [] });
    const sb = await box([{ name, path: "/data" }]);
    try {
      expect(await sb.fs.readText("/data/note")).toBe("written elsewhere\n");
      const mount = (await sb.fs.readText("/proc/mounts")).split("\n").find((l) => l.split(" ")[1] === "/data")!;
      expect(mount).toMatch(/ ext4 rw,nosuid,nodev/);
      expect(listVolumes().find((v) => v.name === name)!.users).toEqual([
        expect.objectContaining({ sandbox: sb.name, id: sb.id, pid: process.pid, readOnly: false }),
      ]);
    } finally {
      await sb.stop();
    }
  });

  it("refuses a second writer, and readers beside a writer, with VolumeBusyError; readers share", async () => {
    const writer = await box([{ name, path: "/data" }]);
    try {
      const second = await box([{ name, path: "/other" }]).catch((e: unknown) => e);
      expect(second).toBeInstanceOf(VolumeBusyError);
      expect((second as Error).message).toMatch(new RegExp(`volume ${name} is in use by sandbox ${writer.name} \\(pid ${process.pid}\\) for writing`));
      expect(await box([{ name, path: "/data", readOnly: true }]).catch((e: unknown) => e)).toBeInstanceOf(VolumeBusyError);
      // msb volume rm is refused while it is in use.
      const rm = spawnSync(process.execPath, [MSB, "volume", "rm", name], { encoding: "utf8" });
      expect(rm.status).toBe(1);
      expect(rm.stderr).toMatch(/in use by sandbox/);
      expect(await writer.fork().catch((e: unknown) => e)).toBeInstanceOf(SnapshotUnsupportedError);
    } finally {
      await writer.stop();
    }
    const a = await box([{ name, path: "/data", readOnly: true }]);
    try {
      const b = await box([{ name, path: "/ro", readOnly: true }]);
      try {
        expect(await b.fs.readText("/ro/note")).toBe("written elsewhere\n");
        const r = await a.command.run("sh", ["-c", "echo x > /data/new"]);
        expect(r.exitCode).not.toBe(0);
        expect(r.stderr).toMatch(/Read-only file system/);
      } finally {
        await b.stop();
      }
    } finally {
      await a.stop();
    }
  });

  it("checks names and paths up front, and msb volume lists and removes", () => {
    expect(() => new CustomSandbox({ image: "local:busybox", volumes: [{ name: "Bad Name", path: "/d" }] })).toThrow(InvalidArgumentError);
    expect(() => new CustomSandbox({ image: "local:busybox", volumes: [{ name: "ok", path: "/proc/x" }] })).toThrow(/volume path "\/proc\/x" is invalid/);
    expect(() => new CustomSandbox({ image: "local:busybox", volumes: [{ name: "ok", path: "/a/../b" }] })).toThrow(InvalidArgumentError);
    expect(
      () =>
        new CustomSandbox({
          image: "local:busybox",
          volumes: [
            { name: "a", path: "/d" },
            { name: "b", path: "/d" },
          ],
        }),
    ).toThrow(/two volumes with the path/);
    const ls = spawnSync(process.execPath, [MSB, "volume", "ls"], { encoding: "utf8" });
    expect(ls.stdout).toMatch(new RegExp(`^  ${name}\\s+67.1 MB`, "m"));
    expect(spawnSync(process.execPath, [MSB, "volume", "rm", name], { encoding: "utf8" }).status).toBe(0);
    expect(listVolumes().map((v) => v.name)).not.toContain(name);
  });
});
