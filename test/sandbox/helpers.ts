// Test helpers for sandbox suites.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/** Whether a process exists (signal 0 checks without sending anything). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The children of a process (default: this one), from /proc/<pid>/task/<tid>/children, else
 * `pgrep -P`. Only this process's own children: never a count of the machine's processes, which
 * other test files running at the same time change.
 */
export function childPids(pid = process.pid): number[] {
  let pids: number[];
  try {
    pids = readdirSync(`/proc/${pid}/task`).flatMap((tid) => readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").split(" ").filter(Boolean).map(Number));
  } catch {
    try {
      pids = execFileSync("pgrep", ["-P", String(pid)])
        .toString()
        .split("\n")
        .filter(Boolean)
        .map(Number);
    } catch {
      pids = []; // pgrep exits 1 when there are none
    }
  }
  return [...new Set(pids)].sort((a, b) => a - b);
}

/** Polls `cond` every `everyMs` until it holds or `ms` have passed; returns its last value. */
export async function waitFor(cond: () => boolean, ms: number, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return true;
}

/** `promise`, or a rejection naming `what` once `ms` have passed (the timer does not outlive it). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
