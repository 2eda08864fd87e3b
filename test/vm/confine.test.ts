// The VMM is confined whatever the guest does: QEMU's seccomp filter, no new privileges, only the
// descriptors it was given, a jail holding only its own files (as root, a uid of its own), and no
// host network namespace for a VM without a network. Checked from outside, on the running QEMU's
// /proc entry, and by pointing a jailed QEMU at a host file outside its set.
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { CustomSandbox } from "../../src/index.js";
import { vmmHelperPath } from "../../src/native.js";
import { guestBoot } from "../../src/vm/guest.js";
import { qemuBinary } from "../../src/vm/qemu.js";

const status = (pid: number, key: string) => new RegExp(`^${key}:\\s+(\\S+)`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
const netns = (pid: number | "self") => readlinkSync(`/proc/${pid}/ns/net`);
const root = process.getuid?.() === 0;
const JAIL_ID_BASE = 0x70000000;
// What a jail's root holds besides the VM's own files' top directories.
const SYSTEM = ["bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "usr"];

describe.skipIf(process.platform !== "linux")("a confined QEMU", () => {
  it("runs under its seccomp filter, without new privileges and, without a network, outside the host's network", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, backend: "qemu", network: "none", snapshot: false });
    try {
      const pid = sb.pid!;
      expect(status(pid, "Seccomp")).toBe("2");
      expect(status(pid, "NoNewPrivs")).toBe("1");
      expect(status(pid, "CapEff")).toBe("0000000000000000");
      if (root) expect(status(pid, "Uid")).toBe(String(JAIL_ID_BASE + pid));
      expect(netns(pid)).not.toBe(netns("self"));
      // Its root is the jail: the system's programs, and the top directories of its own files.
      const own = new Set(
        [os.tmpdir(), os.homedir(), process.env.MSB_CACHE_DIR ?? os.homedir(), (await guestBoot()).kernel].map((d) => path.resolve(d).split("/")[1]),
      );
      const extra = readdirSync(`/proc/${pid}/root`).filter((e) => !SYSTEM.includes(e) && !own.has(e));
      expect(extra).toEqual([]);
      expect(readdirSync(`/proc/${pid}/root/etc`).sort()).toEqual(["ld.so.cache"]);
      expect(await (await sb.command.run("echo", ["inside"])).output()).toBe("inside");
    } finally {
      await sb.stop();
    }
  });

  it("keeps the host's network for a VM that has one", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, backend: "qemu", network: "all", snapshot: false });
    try {
      expect(status(sb.pid!, "Seccomp")).toBe("2");
      expect(netns(sb.pid!)).toBe(netns("self"));
    } finally {
      await sb.stop();
    }
  });
});

describe.skipIf(process.platform !== "linux")("a jailed program", () => {
  const work = mkdtempSync(path.join(os.tmpdir(), "msb-jail-"));
  const rundir = path.join(work, "run");
  const granted = path.join(work, "granted.img");
  const outside = path.join(work, "outside.img");
  execFileSync("mkdir", ["-m", "0700", rundir]);
  writeFileSync(granted, Buffer.alloc(1 << 20));
  writeFileSync(outside, Buffer.alloc(1 << 20));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  const jail = ["--jail", rundir, "--ro", granted, "--no-network"];
  const jailed = (cmd: string[], timeout = 20_000) =>
    spawnSync(vmmHelperPath(), ["exec", String(process.pid), ...jail, "--", ...cmd], { encoding: "utf8", timeout });

  it("sees the system, its own files read-only and its runtime dir, and nothing else", () => {
    const script = [
      `cat ${outside} >/dev/null 2>&1 && echo read-outside`,
      `test -r ${granted} && echo read-granted`,
      `echo x 2>/dev/null >${granted} && echo wrote-granted`,
      `echo x >${rundir}/made && echo wrote-rundir`,
      "echo x 2>/dev/null >/usr/made && echo wrote-usr",
      "echo x 2>/dev/null >/made && echo wrote-root",
      "ls /proc/1/root/ 2>/dev/null | grep -q . && echo saw-init-root",
      // No /proc at all: as another user (a user namespace) QEMU keeps its creator's uid, and
      // /proc/PID/root of the creator's processes would be the host's whole tree.
      `ls /proc/${process.pid}/root/ 2>/dev/null | grep -q . && echo saw-creator-root`,
      "test -e /proc/self && echo has-proc",
      "id -u",
    ].join("; ");
    const r = jailed(["sh", "-c", script]);
    expect(r.stderr).toBe("");
    const lines = r.stdout.trim().split("\n");
    expect(lines.slice(0, -1)).toEqual(["read-granted", "wrote-rundir"]);
    if (root) {
      expect(Number(lines.at(-1))).toBeGreaterThan(JAIL_ID_BASE);
      expect(statSync(rundir).uid).toBe(Number(lines.at(-1)));
    }
  });

  it("keeps QEMU from opening a host file outside its set", () => {
    // QEMU with one read-only drive and its vCPU never started: it opens the drive and waits
    // (stopped at the timeout), or exits at once when it cannot.
    const qemu = (file: string) =>
      jailed([qemuBinary(), "-machine", "none", "-nodefaults", "-display", "none", "-S", "-drive", `file=${file},format=raw,if=none,readonly=on`], 3_000);
    const refused = qemu(outside);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(new RegExp(`Could not open '${outside}': No such file or directory`));
    const opened = qemu(granted);
    expect((opened.error as NodeJS.ErrnoException | undefined)?.code).toBe("ETIMEDOUT");
    expect(opened.stderr).not.toMatch(/Could not open/);
  });
});

describe.skipIf(process.platform !== "linux")("msb-vmm exec", () => {
  // A shell that prints its descriptors and network namespace.
  const report = ["sh", "-c", "ls /proc/$$/fd; readlink /proc/$$/ns/net"];
  const run = (flags: string[]) => {
    // Spawned children get their stdio slots without close-on-exec: 3 is kept, 4 must not pass.
    const [a, b] = [openSync("/dev/null", "r"), openSync("/dev/null", "r")];
    try {
      const r = spawnSync(vmmHelperPath(), ["exec", String(process.pid), ...flags, "--", ...report], {
        stdio: ["ignore", "pipe", "pipe", a, b],
        encoding: "utf8",
      });
      expect(r.stderr).toBe("");
      const lines = r.stdout.trim().split("\n");
      return {
        fds: lines
          .slice(0, -1)
          .map(Number)
          .sort((x, y) => x - y),
        netns: lines.at(-1),
      };
    } finally {
      closeSync(a);
      closeSync(b);
    }
  };

  it("passes on only the descriptors it keeps, and with --no-network an empty network namespace", () => {
    const plain = run(["--keep", "3"]);
    expect(plain.fds).toEqual([0, 1, 2, 3]);
    expect(plain.netns).toBe(netns("self"));
    const isolated = run(["--keep", "3", "--no-network"]);
    expect(isolated.fds).toEqual([0, 1, 2, 3]);
    expect(isolated.netns).not.toBe(netns("self"));
    expect(execFileSync(vmmHelperPath(), ["exec", String(process.pid), "--", "grep", "NoNewPrivs", "/proc/self/status"], { encoding: "utf8" })).toMatch(
      /NoNewPrivs:\s+1/,
    );
  });
});
