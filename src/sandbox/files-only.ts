// A files-only pause: the sandbox's files saved to the host without its memory, and put back
// into a sandbox of the same image booted afresh (no process, no interpreter state). The files
// are the guest's writable layer, which the agent keeps reachable for root at
// /run/microsandbox/rw (native/agent/init.c), and /tmp, a tmpfs of its own. The image's tar and sh
// carry them. A file of the image that was deleted is deleted again (the layer's whiteouts); a
// directory of the image removed and made anew gets the image's files back (its opaque mark is
// not carried).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

import type { AgentClient } from "../agent-client/client.js";
import { ExecError, SnapshotUnsupportedError } from "../errors.js";
import { fileToGuest, guestToFile, MOUNT_POINTS, UPPER } from "./guest-io.js";

// Outside the layer (on /run's tmpfs): what the archive of the layer leaves out.
const EXCLUDE = "/run/microsandbox/files-only.exclude";
/** What a files-only pause keeps in its directory. */
const KEPT = { root: "root.tar", tmp: "tmp.tar", deleted: "deleted.json" } as const;

// Refused with the reason a files-only pause cannot go on in this image.
function refused(what: string, err: unknown): never {
  const missing = err instanceof ExecError && err.errnoName === "ENOENT";
  throw new SnapshotUnsupportedError(
    missing ? `a files-only pause needs tar and sh in the image: ${what} could not start` : `a files-only pause failed: ${what}: ${(err as Error).message}`,
  );
}

const archive = (agent: AgentClient, argv: string[], file: string, limit: number) =>
  guestToFile(agent, argv, file, limit).catch((err: unknown) => refused(argv.join(" "), err));
const unarchive = (agent: AgentClient, argv: string[], file: string) => fileToGuest(agent, argv, file).catch((err: unknown) => refused(argv.join(" "), err));

async function run(agent: AgentClient, argv: string[]): Promise<string> {
  let r: Awaited<ReturnType<AgentClient["exec"]>>;
  try {
    r = await agent.exec(argv, { user: 0 });
  } catch (err) {
    refused(argv.join(" "), err);
  }
  if (r.exitCode !== 0) refused(argv.join(" "), new Error(`exit ${r.exitCode}: ${r.stderr.toString().trim()}`));
  return r.stdout.toString();
}

/**
 * Saves the running sandbox's files into `dir` (as resume's restoreFiles takes them back). Both
 * layers live in the guest's memory, so each archive is refused past `memoryMiB` (plus tar's
 * headers).
 */
export async function saveFiles(agent: AgentClient, dir: string, memoryMiB: number): Promise<void> {
  const limit = memoryMiB * 2 * 1024 * 1024;
  // Whiteouts are character devices 0:0 in the layer: the files of the image deleted since boot.
  // They are listed, and left out of the archive (a sandbox may not make devices).
  const devices = await run(agent, ["sh", "-c", `cd ${UPPER} && find . -type c -exec stat -c '%t:%T:%n' {} \\;`]);
  const whiteouts = devices
    .split("\n")
    .filter((l) => l.startsWith("0:0:./"))
    .map((l) => l.slice("0:0:".length));
  writeFileSync(path.join(dir, KEPT.deleted), `${JSON.stringify(whiteouts.map((w) => w.slice(1)))}\n`, { mode: 0o600 });
  const top = (await agent.list(UPPER)).map((e) => e.name).filter((n) => !MOUNT_POINTS.has(n));
  if (top.length) {
    // tar's exclusions are patterns: a name's own *, ? and [ are escaped.
    await agent.writeFile(EXCLUDE, whiteouts.map((w) => `${w.replace(/[*?[\\]/g, "\\$&")}\n`).join(""));
    await archive(agent, ["tar", "-C", UPPER, "-cf", "-", "-X", EXCLUDE, ...top.map((n) => `./${n}`)], path.join(dir, KEPT.root), limit);
  }
  await archive(agent, ["tar", "-C", "/tmp", "-cf", "-", "."], path.join(dir, KEPT.tmp), limit);
}

/** Whether `dir` holds files saveFiles() wrote. */
export const hasFiles = (dir: string): boolean => existsSync(path.join(dir, KEPT.deleted)) && existsSync(path.join(dir, KEPT.tmp));

/** Puts the files saveFiles() kept in `dir` back into a freshly booted sandbox of the same image. */
export async function restoreFiles(agent: AgentClient, dir: string): Promise<void> {
  const deleted = JSON.parse(readFileSync(path.join(dir, KEPT.deleted), "utf8")) as string[];
  // Deleted first: a directory of the image removed and a file made in its place.
  for (let i = 0; i < deleted.length; i += 500) await run(agent, ["rm", "-rf", "--", ...deleted.slice(i, i + 500)]);
  if (existsSync(path.join(dir, KEPT.root))) await unarchive(agent, ["tar", "-C", "/", "-xf", "-"], path.join(dir, KEPT.root));
  await unarchive(agent, ["tar", "-C", "/tmp", "-xf", "-"], path.join(dir, KEPT.tmp));
}
