// The boot benchmark's floor: the same kernel, QEMU flags and devices as a sandbox, booting a
// trivial init (msb-floor-init) that prints a marker. What it takes is what the kernel and the
// VMM cost before any of our code runs; every sandbox phase is also shown as a ratio to it.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { guestArch } from "../vm/agent-binary.js";
import { MicrosandboxError } from "../errors.js";
import { cacheDir, makeRuntimeDir } from "../paths.js";
import type { VmConfig } from "../vm/backend.js";
import { cpioNewc } from "../vm/initramfs.js";
import { guestBoot } from "../vm/guest.js";
import type { QemuBackend } from "../vm/qemu.js";

const MARKER = "MSB-FLOOR-MARKER";

function floorInitramfs(): string {
  const init = fileURLToPath(new URL(`../../build-guest/${guestArch()}/msb-floor-init`, import.meta.url));
  if (!existsSync(init)) throw new MicrosandboxError(`${init} is missing: rebuild the native parts (npm rebuild microsandbox)`);
  const out = path.join(cacheDir(), "initramfs", "floor.cpio");
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, cpioNewc([{ path: "init", mode: 0o100755, data: readFileSync(init) }]));
  return out;
}

/** Boots the floor VM once with `backend`'s flags and `config`'s devices; ms from spawn to marker. */
export async function floorRun(backend: QemuBackend, config: VmConfig): Promise<number> {
  const { kernel } = await guestBoot();
  const initramfs = floorInitramfs();
  const disk = await config.rootDisk();
  const dir = makeRuntimeDir();
  // Same flags as a sandbox, with the console on stdout so the marker is seen as it is printed.
  const args = backend
    .args(backend.accel, config, { kernel, initramfs }, disk, path.join(dir, "floor.sock"), "/dev/null")
    .map((a) => (a.startsWith("file,id=console") ? "stdio,id=console" : a));
  const t0 = performance.now();
  const qemu = spawn(process.env.MSB_QEMU ?? "qemu-system-x86_64", args, { stdio: ["ignore", "pipe", "ignore"] });
  let seen = "";
  let at: number | undefined;
  qemu.stdout.on("data", (d: Buffer) => {
    seen = (seen + d.toString()).slice(-4000);
    if (at === undefined && seen.includes(MARKER)) at = performance.now() - t0;
  });
  const timer = setTimeout(() => qemu.kill("SIGKILL"), config.bootTimeout * 1000);
  await new Promise((resolve) => qemu.once("exit", resolve));
  clearTimeout(timer);
  rmSync(dir, { recursive: true, force: true });
  if (at === undefined) throw new MicrosandboxError(`the floor VM printed no marker:\n${seen}`);
  return at;
}
