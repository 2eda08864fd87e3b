// Whether QEMU can run our guest kernel under this host's KVM, found once by a trial boot of the
// floor's trivial init and kept in the cache per (host kernel, QEMU version, guest kernel): a
// /dev/kvm that opens is not always one that runs guests (nested virtualization refusing the host
// CPU's MSRs, hypervisors that emulate every instruction). A KVM boot that fails later is recorded
// the same way, so the next process does not try again.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { debuglog } from "node:util";

import { cacheDir } from "../paths.js";
import { guestBoot } from "./guest.js";
import { QemuBackend, qemuBinary } from "./qemu.js";

const debug = debuglog("microsandbox");
// A real KVM boots the floor in well under a second; an emulating one takes minutes.
const TRIAL_SECONDS = 20;

export interface KvmVerdict {
  ok: boolean;
  /** How the trial went, e.g. "booted to init in 180 ms" or what failed. */
  detail: string;
}

const verdicts = new Map<string, KvmVerdict>();

async function verdictFile(kernel: string | undefined): Promise<string> {
  const { kernel: vmlinux } = await guestBoot(kernel ? { kernel } : {});
  const st = statSync(vmlinux);
  const qemuVersion = execFileSync(qemuBinary(), ["--version"], { encoding: "utf8" }).split("\n")[0]!;
  const key = createHash("sha256").update([os.release(), qemuVersion, vmlinux, st.size, st.mtimeMs].join("\0")).digest("hex").slice(0, 24);
  return path.join(cacheDir(), "kvm-trial", `${key}.json`);
}

function save(file: string, v: KvmVerdict): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(v)}\n`);
  renameSync(tmp, file);
  verdicts.set(file, v);
}

/** The verdict for this host, from the cache, or from a trial boot made now and cached. */
export async function kvmTrial(kernel?: string): Promise<KvmVerdict> {
  const file = await verdictFile(kernel);
  const known = verdicts.get(file);
  if (known) return known;
  try {
    const v = JSON.parse(readFileSync(file, "utf8")) as KvmVerdict;
    if (typeof v.ok === "boolean" && typeof v.detail === "string") {
      verdicts.set(file, v);
      return v;
    }
  } catch {
    // no verdict yet (or an unreadable one): try
  }
  let v: KvmVerdict;
  try {
    const ms = await new QemuBackend({ accel: "kvm", ...(kernel ? { kernel } : {}) }).floor({
      name: "kvm-trial",
      memory: 128,
      cpus: 1,
      network: "none",
      // It asks whether KVM boots our kernel, not whether this host can jail.
      confinement: "best-effort",
      maxProcesses: 64,
      rootfs: "",
      rootDisk: async () => undefined,
      bootTimeout: TRIAL_SECONDS,
    });
    v = { ok: true, detail: `booted to init in ${Math.round(ms)} ms` };
  } catch (err) {
    v = { ok: false, detail: (err as Error).message.split("\n").slice(0, 3).join(" ").slice(0, 300) };
  }
  debug("KVM trial boot: %o", v);
  save(file, v);
  return v;
}

/** Records that a KVM boot failed on this host: later processes use TCG up front. */
export async function recordKvmFailure(kernel: string | undefined, detail: string): Promise<void> {
  save(await verdictFile(kernel), { ok: false, detail: `a sandbox boot failed: ${detail}` });
}
