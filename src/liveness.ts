// Whether a process that left a mark (a runtime dir's owner, a lock, a volume lease) may still
// be running: the one check every such mark is judged by. A pid alone is not enough: after the
// process ends its pid is reused, so a mark also records when the process started, in which boot
// and in which pid namespace. Unknowable cases count as alive: what a live process holds must
// never be taken from it.
import { readFileSync, readlinkSync } from "node:fs";

/** Who made a mark: its pid and, where known (Linux), its start time, boot and pid namespace. */
export interface ProcessStamp {
  pid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks after boot). */
  start?: string;
  /** /proc/sys/kernel/random/boot_id: pids and start times only compare within one boot. */
  boot?: string;
  /** The pid namespace the pid is numbered in (/proc/self/ns/pid). */
  pidns?: string;
}

function readOr<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

// /proc/<pid>/stat: "pid (comm) state ppid ...". comm may hold spaces and parentheses, so the
// fields are counted from the last ")": state is field 3, starttime field 22.
function procStat(pid: number): { state: string; start: string } | undefined {
  if (process.platform !== "linux") return undefined;
  const stat = readOr(() => readFileSync(`/proc/${pid}/stat`, "utf8"));
  if (!stat) return undefined;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields.length >= 20 ? { state: fields[0]!, start: fields[19]! } : undefined;
}

let self: ProcessStamp | undefined;

/** This process's stamp. */
export function ownStamp(): ProcessStamp {
  self ??= stampOf(process.pid);
  return self;
}

/** The stamp of the running process `pid` (one of this pid namespace, such as a child). */
export function stampOf(pid: number): ProcessStamp {
  const linux = process.platform === "linux";
  const start = procStat(pid)?.start;
  const boot = linux ? readOr(() => readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim()) : undefined;
  const pidns = linux ? readOr(() => readlinkSync("/proc/self/ns/pid")) : undefined;
  return { pid, ...(start ? { start } : {}), ...(boot ? { boot } : {}), ...(pidns ? { pidns } : {}) };
}

/**
 * A stamp read back from a file (untrusted JSON, or a bare pid as older marks hold), or undefined
 * when it names no real process: a pid of 0 or below would name a process group in kill().
 */
export function parseStamp(value: unknown): ProcessStamp | undefined {
  const o = typeof value === "number" ? { pid: value } : value;
  if (!o || typeof o !== "object") return undefined;
  const r = o as Record<string, unknown>;
  if (!Number.isSafeInteger(r.pid) || (r.pid as number) <= 0) return undefined;
  const stamp: ProcessStamp = { pid: r.pid as number };
  for (const key of ["start", "boot", "pidns"] as const) if (typeof r[key] === "string") stamp[key] = r[key];
  return stamp;
}

/** Whether the process of `stamp` may still be running. */
export function alive(stamp: ProcessStamp): boolean {
  const me = ownStamp();
  if (stamp.boot && me.boot && stamp.boot !== me.boot) return false; // from before a reboot
  if (stamp.pidns && me.pidns && stamp.pidns !== me.pidns) return true; // another pid namespace: its pids mean nothing here
  try {
    process.kill(stamp.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
  }
  const stat = procStat(stamp.pid);
  if (stat && (stat.state === "Z" || stat.state === "X")) return false; // dead, not yet reaped
  if (stamp.start && stat && stat.start !== stamp.start) return false; // the pid was reused
  return true;
}

/** Whether `stamp` is this process's. */
export function isOwn(stamp: ProcessStamp | undefined): boolean {
  const me = ownStamp();
  return !!stamp && stamp.pid === me.pid && stamp.start === me.start && stamp.boot === me.boot && stamp.pidns === me.pidns;
}
