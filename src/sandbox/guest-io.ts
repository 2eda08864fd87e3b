// Streams between a host file and a process in the guest, run as root: a guest archive to the
// host (a files-only pause, an image build's layer) and a host archive into the guest. The guest
// may be hostile (its tar is its own), so what it sends is cut off at a limit. Both fail with a
// plain Error saying why (or the ExecError of a program that could not start); callers say what
// it meant.
import { once } from "node:events";
import { createReadStream, createWriteStream } from "node:fs";
import { finished } from "node:stream/promises";

import type { AgentClient } from "../agent-client/client.js";

/** The guest's writable layer (overlayfs upper), reachable for root (native/agent/init.c). */
export const UPPER = "/run/microsandbox/rw/upper";
/** Mount points at the root: what is under them is not in the layer, and their modes are not its own. */
export const MOUNT_POINTS: ReadonlySet<string> = new Set(["proc", "sys", "dev", "run", "tmp"]);

const stderrText = (parts: Buffer[]) => Buffer.concat(parts).toString().trim().slice(0, 2000);

/** Runs `argv` as root, its stdout into `file`, and fails unless it exits 0 within `limit` bytes. */
export async function guestToFile(agent: AgentClient, argv: string[], file: string, limit: number, signal?: AbortSignal): Promise<void> {
  const out = createWriteStream(file, { mode: 0o600 });
  const stderr: Buffer[] = [];
  try {
    const proc = agent.spawn(argv, { user: 0, ...(signal ? { signal } : {}) });
    let sent = 0;
    for await (const c of proc) {
      if (c.stream === "stderr") {
        if (stderr.length < 64) stderr.push(c.data);
      } else {
        sent += c.data.length;
        if (sent > limit) {
          proc.kill("SIGKILL");
          throw new Error(`it sent more than ${limit} bytes, more than the sandbox's memory can hold`);
        }
        if (!out.write(c.data)) await once(out, "drain");
      }
    }
    const { exitCode } = await proc.exit;
    if (exitCode !== 0) throw new Error(`exit ${exitCode}: ${stderrText(stderr)}`);
  } finally {
    out.end();
    await finished(out).catch(() => {});
  }
}

/** Runs `argv` as root with `file` on its stdin, and fails unless it exits 0. */
export async function fileToGuest(agent: AgentClient, argv: string[], file: string, signal?: AbortSignal): Promise<void> {
  const proc = agent.spawn(argv, { user: 0, stdin: true, ...(signal ? { signal } : {}) });
  const stderr: Buffer[] = [];
  const drained = (async () => {
    for await (const c of proc) if (c.stream === "stderr" && stderr.length < 64) stderr.push(c.data);
  })();
  try {
    for await (const chunk of createReadStream(file)) await proc.write(chunk as Buffer);
    await proc.end();
  } finally {
    await drained;
  }
  const { exitCode } = await proc.exit;
  if (exitCode !== 0) throw new Error(`exit ${exitCode}: ${stderrText(stderr)}`);
}
