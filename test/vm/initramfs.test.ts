// cpioNewc checked against GNU cpio's own extraction, and buildInitramfs against a fake kernel dir.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { afterAll, describe, expect, it } from "vitest";

import { BootConfigSchema } from "../../src/gen/agent_pb.js";
import { encodeBootConfig, initramfsWithBoot } from "../../src/vm/guest.js";
import { buildInitramfs, type CpioEntry, cpioNewc } from "../../src/vm/initramfs.js";

const work = mkdtempSync(join(tmpdir(), "msb-initramfs-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const odd = Buffer.from("hello, odd-length file\n!"); // 24 + 1 bytes: exercises the data padding
const entries: CpioEntry[] = [
  { path: "/etc", mode: 0o040755 },
  { path: "/etc/deep", mode: 0o040700 },
  { path: "/etc/deep/odd.txt", mode: 0o100640, data: odd },
  { path: "/etc/empty", mode: 0o100600 },
  { path: "/bin", mode: 0o040755 },
  { path: "/bin/sh", mode: 0o120777, target: "../etc/deep/odd.txt" },
  { path: "/init", mode: 0o100755, data: Buffer.from("#!/bin/sh\n") },
];

/** Extracts an archive with the real cpio (-idv) into a fresh directory and returns it. */
function extract(archive: Buffer, name: string): string {
  const dir = join(work, name);
  mkdirSync(dir);
  execFileSync("cpio", ["-idv", "--no-absolute-filenames"], { cwd: dir, input: archive, stdio: ["pipe", "pipe", "pipe"] });
  return dir;
}

describe("cpioNewc", () => {
  it("produces an archive that cpio -idv extracts faithfully", () => {
    const archive = cpioNewc(entries);
    expect(archive.length % 4).toBe(0);
    expect(archive.subarray(0, 6).toString()).toBe("070701");
    const dir = extract(archive, "basic");
    expect(lstatSync(join(dir, "etc")).mode).toBe(0o040755);
    expect(lstatSync(join(dir, "etc/deep")).mode).toBe(0o040700);
    expect(lstatSync(join(dir, "etc/deep/odd.txt")).mode).toBe(0o100640);
    expect(readFileSync(join(dir, "etc/deep/odd.txt"))).toEqual(odd);
    expect(lstatSync(join(dir, "etc/empty")).size).toBe(0);
    expect(lstatSync(join(dir, "init")).mode).toBe(0o100755);
    expect(readFileSync(join(dir, "init"), "utf8")).toBe("#!/bin/sh\n");
    expect(lstatSync(join(dir, "bin/sh")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(dir, "bin/sh"))).toBe("../etc/deep/odd.txt");
    expect(readFileSync(join(dir, "bin/sh"))).toEqual(odd);
  });

  it("lists every entry in order and ends with the trailer", () => {
    const archive = cpioNewc(entries);
    const listing = execFileSync("cpio", ["-it"], { input: archive, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
    expect(listing.trim().split("\n")).toEqual(entries.map((e) => e.path.slice(1)));
    expect(archive.includes(Buffer.from("TRAILER!!!\0"))).toBe(true);
  });

  it("is reproducible: two builds are byte-identical", () => {
    expect(cpioNewc(entries).equals(cpioNewc(entries))).toBe(true);
  });

  it("rejects unsafe or malformed entries", () => {
    expect(() => cpioNewc([{ path: "../x", mode: 0o100644 }])).toThrow(/invalid path/);
    expect(() => cpioNewc([{ path: "a", mode: 0o120777 }])).toThrow(/no target/);
    expect(() => cpioNewc([{ path: "a", mode: 0o020644 }])).toThrow(/unsupported mode/);
    expect(() =>
      cpioNewc([
        { path: "a", mode: 0o040755 },
        { path: "/a", mode: 0o040755 },
      ]),
    ).toThrow(/duplicate/);
  });
});

describe("buildInitramfs", () => {
  it("packs the agent as /init and the modules", async () => {
    const kernelDir = join(work, "kernel");
    mkdirSync(join(kernelDir, "modules"), { recursive: true });
    writeFileSync(join(kernelDir, "modules/a.ko"), "A".repeat(5));
    writeFileSync(join(kernelDir, "modules/b.ko"), "B".repeat(7));
    writeFileSync(join(kernelDir, "modules/order"), "b.ko\na.ko\n");
    const agentPath = join(work, "agent");
    writeFileSync(agentPath, "\x7fELF fake agent");
    const outPath = join(work, "initramfs.cpio");
    await buildInitramfs({ agentPath, kernelDir, outPath });
    const first = readFileSync(outPath);
    await buildInitramfs({ agentPath, kernelDir, outPath });
    expect(readFileSync(outPath).equals(first)).toBe(true);

    const dir = extract(first, "initramfs");
    expect(lstatSync(join(dir, "modules")).isDirectory()).toBe(true);
    expect(lstatSync(join(dir, "init")).mode).toBe(0o100755);
    expect(readFileSync(join(dir, "init"), "utf8")).toBe("\x7fELF fake agent");
    expect(readFileSync(join(dir, "modules/order"), "utf8")).toBe("b.ko\na.ko\n");
    expect(readFileSync(join(dir, "modules/b.ko"), "utf8")).toBe("BBBBBBB");

    writeFileSync(join(kernelDir, "modules/order"), "b.ko\nc.ko\n");
    await expect(buildInitramfs({ agentPath, kernelDir, outPath: join(work, "bad.cpio") })).rejects.toThrow(/c\.ko/);
  });

  it("packs a kernel with its drivers built in: no modules at all", async () => {
    const kernelDir = join(work, "builtin-kernel");
    mkdirSync(kernelDir);
    const agentPath = join(work, "agent2");
    writeFileSync(agentPath, "agent");
    await buildInitramfs({ agentPath, kernelDir, outPath: join(work, "builtin.cpio") });
    const dir = extract(readFileSync(join(work, "builtin.cpio")), "builtin");
    expect(readFileSync(join(dir, "init"), "utf8")).toBe("agent");
    // Only the agent, which makes its own mount points.
    expect(readdirSync(dir)).toEqual(["init"]);
  });

  it("gives each VM its BootConfig in an archive appended to the agent's", async () => {
    const kernelDir = join(work, "boot-kernel");
    mkdirSync(kernelDir);
    writeFileSync(join(work, "agent3"), "agent");
    const base = join(work, "base.cpio");
    await buildInitramfs({ agentPath: join(work, "agent3"), kernelDir, outPath: base });
    const boot = encodeBootConfig({ channel: { case: "virtioPort", value: "msb.agent" }, image: { case: "disk", value: "/dev/vda" }, maxProcesses: 64 });
    const made = initramfsWithBoot(base, boot);
    // One file per (initramfs, BootConfig), beside the initramfs: the same again is the same file.
    expect(made).toBe(join(work, `base-boot-${createHash("sha256").update(boot).digest("hex").slice(0, 16)}.cpio`));
    expect(initramfsWithBoot(base, boot)).toBe(made);
    const vm = readFileSync(made);
    const first = readFileSync(base);
    // The kernel unpacks archives one after another: the agent's, unchanged, then the BootConfig's.
    expect(vm.subarray(0, first.length).equals(first)).toBe(true);
    const dir = extract(vm.subarray(first.length), "boot");
    expect(lstatSync(join(dir, "msb-boot.pb")).mode).toBe(0o100400);
    expect(fromBinary(BootConfigSchema, readFileSync(join(dir, "msb-boot.pb")))).toMatchObject({
      maxProcesses: 64,
      image: { case: "disk", value: "/dev/vda" },
    });
  });
});
