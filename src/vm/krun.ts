// KrunBackend: boots a VM through libkrun (KVM on Linux, Hypervisor.framework on macOS) in the
// per-VM helper msb-vmm, never inside Node: krun_start_enter takes over the calling process. The
// launch config goes to the helper on an inherited pipe (proto/vmm.proto), failures before the
// VM starts come back on another; the agent connects over vsock, which libkrun maps to a unix
// socket this process listens on.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { debuglog } from "node:util";
import protobuf from "protobufjs";

import { AgentClient } from "../agent-client/client.js";
import { lengthPrefixed } from "../agent-client/protocol.js";
import { agentBinaryPath } from "./agent-binary.js";
import { KrunStartError } from "../errors.js";
import { probe } from "../native.js";
import { makeRuntimeDir } from "../paths.js";
import { type Backend, type BootTimeline, runningVm, type Vm, type VmConfig } from "./backend.js";
import { vmmHelperPath } from "./helper.js";

const debug = debuglog("microsandbox");
const root = protobuf.loadSync(fileURLToPath(new URL("../../proto/vmm.proto", import.meta.url)));
const KrunConfig = root.lookupType("microsandbox.vmm.KrunConfig");
const KrunStatus = root.lookupType("microsandbox.vmm.KrunStatus");
const MAX_STATUS = 64 * 1024;
// The agent's vsock port; libkrun reserves 620, 123 and 1024-1031 for itself.
export const AGENT_VSOCK_PORT = 7070;
export const IMAGE_TAG = "msb-image";


/** Why libkrun cannot be used on this host, or undefined when it can. */
export function krunUnavailable(): string | undefined {
  const p = probe();
  if (process.platform === "linux" && !p.kvm.ok) return `KVM: ${p.kvm.detail}`;
  if (!p.libkrun.ok) return `libkrun: ${p.libkrun.detail}`;
  if (!p.libkrunfw.ok) return `libkrunfw: ${p.libkrunfw.detail}`;
  if (!p.libkrun.readOnlyImage) return `libkrun ${p.libkrun.generation} can share an image neither read-only by virtio-fs nor as a read-only disk`;
  return undefined;
}

/** The launch config the helper receives for `config`. */
export function krunConfig(config: VmConfig, dirs: { boot: string; socket: string; consoleLog: string }): Record<string, unknown> {
  return {
    logLevel: 1,
    cpus: config.cpus,
    memoryMib: config.memory,
    rootDir: dirs.boot,
    imageDir: config.rootfs,
    imageTag: IMAGE_TAG,
    vsockPort: AGENT_VSOCK_PORT,
    vsockSocket: dirs.socket,
    network: config.network === "all" ? 1 : 0,
    execPath: "/msb-agent",
    argv: ["--vsock", String(AGENT_VSOCK_PORT), "--root", `virtiofs:${IMAGE_TAG}`, "--pids", String(config.maxProcesses)],
    env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    workdir: "/",
    consoleLog: dirs.consoleLog,
  };
}

// Reads the status pipe to its end: nothing means the VM is starting, a message means it is not.
async function readStatus(stream: Readable): Promise<KrunStartError | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_STATUS) break;
    chunks.push(chunk);
  }
  const data = Buffer.concat(chunks);
  if (data.length === 0) return undefined;
  try {
    const len = data.readUInt32BE(0);
    const s = KrunStatus.decode(data.subarray(4, 4 + len)) as unknown as { step: string; errnum: number; message: string };
    return new KrunStartError(`libkrun could not start the VM at ${s.step}: ${s.message}`, s.step, s.errnum);
  } catch {
    return new KrunStartError(`the VM helper reported an unreadable failure (${data.length} bytes)`, "status", 0);
  }
}

export class KrunBackend implements Backend {
  readonly name = "krun";

  async boot(config: VmConfig): Promise<Vm> {
    const t0 = performance.now();
    const helper = vmmHelperPath();
    const agentBinary = agentBinaryPath();
    const dir = makeRuntimeDir();
    const server = createServer();
    const cleanup = () => {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    };
    let child: ChildProcess | undefined;
    // Resolves when the helper is gone, whether it exited or could not be spawned at all.
    let exited: Promise<void> = Promise.resolve();
    try {
      // The guest's root: just the agent and the mount points it assembles the real root on.
      const boot = path.join(dir, "root");
      for (const d of ["dev", "proc", "sys", "run", "newroot", "tmp"]) mkdirSync(path.join(boot, d), { recursive: true });
      copyFileSync(agentBinary, path.join(boot, "msb-agent"));
      const socket = path.join(dir, "agent.sock");
      const consoleLog = path.join(dir, "console.log");
      // libkrun connects to this socket when the guest connects to its vsock port: listen first.
      server.listen(socket);
      await once(server, "listening");
      const accepted = once(server, "connection") as Promise<[Socket]>;
      accepted.catch(() => {}); // rejects when the server closes unused
      const hostPrepMs = performance.now() - t0;

      child = spawn(helper, ["krun", String(process.pid), "3", "4"], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
      const vmm = child;
      exited = new Promise((resolve) => {
        vmm.once("exit", () => resolve());
        vmm.once("error", () => resolve());
      });
      const vmmStartMs = performance.now() - t0;
      let stderr = "";
      vmm.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-4000)));
      const configPipe = vmm.stdio[3] as Writable;
      configPipe.on("error", () => {}); // a helper that died early is reported through the status pipe
      configPipe.end(lengthPrefixed(KrunConfig.encode(KrunConfig.fromObject(krunConfig(config, { boot, socket, consoleLog }))).finish()));
      debug("booting %s with libkrun", config.name);

      const failure = await readStatus(vmm.stdio[4] as Readable);
      if (failure) throw failure;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new KrunStartError(`no agent connection within ${config.bootTimeout} s`, "boot", 0)), config.bootTimeout * 1000);
      });
      const died = exited.then(() => {
        throw new KrunStartError(`the VM ended before its agent connected${stderr.trim() ? `: ${stderr.trim()}` : ""}`, "boot", 0);
      });
      let agent: AgentClient;
      try {
        const [stream] = await Promise.race([accepted, died, timeout]);
        agent = await AgentClient.fromStream(stream, { timeout: config.bootTimeout });
      } finally {
        clearTimeout(timer);
        died.catch(() => {});
      }
      const timeline: BootTimeline = {
        hostPrepMs,
        vmmStartMs,
        agentReadyMs: performance.now() - t0,
        guest: agent.hello.boot.map((e) => ({ name: e.name, ms: e.ns / 1e6 })),
      };
      return runningVm({ agent, backend: "krun", child: vmm, exited, timeline, consoleLog, cleanup });
    } catch (err) {
      child?.kill("SIGKILL");
      await exited;
      cleanup();
      throw err;
    }
  }
}
