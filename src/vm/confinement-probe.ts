// What this host lets msb-vmm confine a VMM with: the same `msb-vmm exec` a QEMU VM with a network
// gets (a jail in a fresh runtime dir, the network held by the seccomp supervisor), run around
// `true` in place of QEMU, so msb doctor reports what create() would find rather than a guess.
import { spawn } from "node:child_process";
import { accessSync, constants, rmSync } from "node:fs";
import type { Socket } from "node:net";
import path from "node:path";

import { MicrosandboxError } from "../errors.js";
import { vmmHelperPath } from "../native.js";
import { makeRuntimeDir } from "../paths.js";
import type { Confinement } from "./backend.js";
import { confinementOf, VmmControl } from "./vmm-control.js";

const CONTROL_FD = 3;
// Every address admitted: the probe asks whether the supervisor can be installed, not what it allows.
const ANY_ADDRESS = "+0.0.0.0/0 +::/0";
const TIMEOUT_MS = 10_000;

// `true` from PATH: it runs inside the jail, which holds the system's programs (/usr, /bin, /lib).
function trueProgram(env: NodeJS.ProcessEnv): string {
  for (const dir of (env.PATH ?? "/usr/bin:/bin").split(path.delimiter)) {
    const file = path.join(dir || ".", "true");
    try {
      accessSync(file, constants.X_OK);
      return path.resolve(file);
    } catch {}
  }
  throw new MicrosandboxError(`cannot probe confinement: no executable "true" on PATH (${env.PATH ?? ""})`);
}

/**
 * Runs `msb-vmm exec --confinement best-effort` with a jail and a network supervisor around
 * `true`, and returns what the helper applied (mode "best-effort": `missing` lists what a
 * "required" sandbox would fail on). Throws when the helper reports nothing.
 */
export async function probeConfinement(env: NodeJS.ProcessEnv = process.env): Promise<Confinement> {
  const program = trueProgram(env);
  const dir = makeRuntimeDir();
  try {
    // A program outside the system's directories is not in the jail unless bound in.
    const ro = /^\/(usr|bin|sbin|lib\w*)\//.test(program) ? [] : ["--ro", program];
    const argv = ["exec", String(process.pid), "--control", String(CONTROL_FD), "--confinement", "best-effort", "--jail", dir, ...ro];
    const stdio: ("ignore" | "pipe")[] = ["ignore", "ignore", "pipe", "pipe"];
    const child = spawn(vmmHelperPath(), [...argv, "--net-policy", ANY_ADDRESS, "--", program], { stdio, env });
    const control = new VmmControl(child.stdio[CONTROL_FD] as Socket);
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    const exited = new Promise<string>((resolve) => {
      child.once("error", (err) => resolve(err.message));
      child.once("close", (code, signal) => resolve(signal ? `killed by ${signal}` : `exit status ${code}`));
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), TIMEOUT_MS);
    try {
      const report = await control.confinement.catch(async () => {
        const how = await exited;
        throw new MicrosandboxError(`msb-vmm exec reported no confinement (${how}${stderr.trim() ? `: ${stderr.trim()}` : ""})`);
      });
      await exited;
      return confinementOf(report, "best-effort");
    } finally {
      clearTimeout(timer);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
