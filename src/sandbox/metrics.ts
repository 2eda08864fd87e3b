// A sandbox's metrics: the guest's counters (the agent reads them from its kernel) with the host's
// view of the VMM beside them. CPU percent is over an interval: since the previous sample of the
// same caller (metrics() or one metricsStream), or since boot for the first.
import { readFileSync } from "node:fs";

import type { GuestMetrics } from "../agent-client/client.js";

export interface SandboxMetrics {
  /** When the guest was sampled. */
  at: Date;
  /** `percent` of all the sandbox's vCPUs (100 = every one busy) over the interval; `timeMs` busy since boot. */
  cpu: { percent: number; timeMs: number; cores: number };
  /** Guest memory (`limitBytes` is the sandbox's `memory`), and the VMM's resident memory on the host (Linux). */
  memory: { usedBytes: number; availableBytes: number; totalBytes: number; limitBytes: number; vmmResidentBytes?: number };
  /** The root filesystem's writable layer, and bytes through the guest's disks since boot. */
  disk: { usedBytes: number; freeBytes: number; readBytes: number; writtenBytes: number };
  /** Bytes over the guest's network interfaces since boot (0 without a network). */
  network: { rxBytes: number; txBytes: number };
  /** Processes the sandbox's commands run now. */
  processes: number;
  uptimeMs: number;
}

/** The last sample a caller saw, for the next one's CPU percent. */
export type CpuMark = { busyNs: number; totalNs: number } | undefined;

export function sandboxMetrics(g: GuestMetrics, previous: CpuMark, limitMiB: number, vmmPid: number | undefined): SandboxMetrics {
  const busy = g.cpuBusyNs - (previous?.busyNs ?? 0);
  const total = g.cpuTotalNs - (previous?.totalNs ?? 0);
  const rss = vmmPid === undefined ? undefined : residentBytes(vmmPid);
  return {
    at: new Date(),
    cpu: { percent: total > 0 ? Math.round((busy / total) * 1000) / 10 : 0, timeMs: g.cpuBusyNs / 1e6, cores: g.cpus },
    memory: {
      usedBytes: g.memoryTotalBytes - g.memoryAvailableBytes,
      availableBytes: g.memoryAvailableBytes,
      totalBytes: g.memoryTotalBytes,
      limitBytes: limitMiB * 2 ** 20,
      ...(rss !== undefined ? { vmmResidentBytes: rss } : {}),
    },
    disk: { usedBytes: g.diskTotalBytes - g.diskFreeBytes, freeBytes: g.diskFreeBytes, readBytes: g.diskReadBytes, writtenBytes: g.diskWrittenBytes },
    network: { rxBytes: g.netRxBytes, txBytes: g.netTxBytes },
    processes: g.processes,
    uptimeMs: g.uptimeNs / 1e6,
  };
}

export const cpuMark = (g: GuestMetrics): CpuMark => ({ busyNs: g.cpuBusyNs, totalNs: g.cpuTotalNs });

// VmRSS of a process, from /proc (Linux only).
function residentBytes(pid: number): number | undefined {
  try {
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}
