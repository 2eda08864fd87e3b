// The interface every VMM backend implements (QEMU now, libkrun next): boot a VM whose PID 1 is
// the guest agent, hand back a connected AgentClient, and stop or kill it.
import type { ChildProcess } from "node:child_process";

import type { AgentClient } from "../agent-client/client.js";

export type NetworkMode = "none" | "all";

export interface VmConfig {
  /** Guest RAM in MiB. */
  memory: number;
  /** Virtual CPUs (whole number). */
  cpus: number;
  network: NetworkMode;
  /** The image, unpacked (libkrun shares it read-only by virtio-fs). */
  rootfs: string;
  /** The image as a read-only ext4 disk (QEMU); made lazily, only for backends that use it. */
  rootDisk: () => Promise<string>;
  /** Most processes the sandbox's commands may have at once (the guest's pids cgroup). */
  maxProcesses: number;
  /** Seconds to wait for the agent's hello. */
  bootTimeout: number;
  /** A name for logs and errors. */
  name: string;
}

/** Milliseconds from the start of boot() for each phase, and the guest's own timeline. */
export interface BootTimeline {
  /** Host-side preparation before the VMM was started (kernel, initramfs, disks). */
  hostPrepMs: number;
  /** The VMM process was spawned. */
  vmmStartMs: number;
  /** The agent's hello arrived. */
  agentReadyMs: number;
  /** Guest milestones (agent_start, modules_loaded, root_mounted, ...) in ms since guest kernel start. */
  guest: { name: string; ms: number }[];
}

export interface Vm {
  readonly agent: AgentClient;
  readonly backend: string;
  /** Process id of the VMM. */
  readonly pid: number;
  readonly timeline: BootTimeline;
  /** The guest console log, kept while the VM runs and after a failure. */
  readonly consoleLog: string;
  /** Resolves when the VMM process ended. */
  readonly exited: Promise<void>;
  /** Graceful: agent shutdown, then a bounded wait, then kill. Idempotent. */
  stop(): Promise<void>;
  /** Kills the VMM at once. */
  kill(): void;
}

export interface Backend {
  readonly name: string;
  boot(config: VmConfig): Promise<Vm>;
}

/**
 * The Vm of a VMM process with a connected agent. stop(): the agent shuts the guest down (there is
 * no graceful stop from outside with libkrun on Linux, and QEMU's would race the agent), a
 * bounded wait for the VMM to exit, SIGKILL after it, then `cleanup`.
 */
export function runningVm(parts: {
  agent: AgentClient;
  backend: string;
  child: ChildProcess;
  exited: Promise<void>;
  timeline: BootTimeline;
  consoleLog: string;
  cleanup: () => void;
}): Vm {
  const { agent, child, exited } = parts;
  let stopping: Promise<void> | undefined;
  return {
    agent,
    backend: parts.backend,
    pid: child.pid!,
    timeline: parts.timeline,
    consoleLog: parts.consoleLog,
    exited,
    kill: () => void child.kill("SIGKILL"),
    stop() {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          await agent.shutdown({ timeout: 5 }).catch(() => {});
          const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
          await exited;
          clearTimeout(timer);
        }
        agent.close();
        parts.cleanup();
      })();
      return stopping;
    },
  };
}
