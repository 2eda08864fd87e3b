// A paused sandbox on disk: its saved machine (src/vm/machine.ts: the VM's state, RAM included),
// or only its files (files-only.ts), and what it takes to bring it back, in this process or
// another: options, image, and the processes kept running.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";

import { InvalidArgumentError, PausedSandboxNotFoundError } from "../errors.js";
import { withLock } from "../lock.js";
import { cacheDir } from "../paths.js";
import type { KeptSession } from "../vm/machine.js";
import type { KeptCommand } from "./commands.js";
import { hasFiles } from "./files-only.js";
import { checkName, type SandboxOptions } from "./options.js";

const FORMAT = 2;

export interface PausedSandbox {
  format: number;
  /** The class that paused it: only the same class resumes it. */
  kind: string;
  /** The sandbox's options (registry credentials are never written). */
  options: SandboxOptions & { name: string; image: string };
  /** The image's content id at pause time: the same content must still be stored. */
  imageId: string;
  /** Processes kept across the pause (the interpreter of run()). */
  keep: KeptSession[];
  /** Commands spawned with `keep` that the pause kept running (absent in files written before them: none). */
  commands: KeptCommand[];
  /** Only its files were kept (pause({ keepMemory: false })): it resumes by booting afresh over them. */
  filesOnly?: true;
  pausedAt: string;
}

/** Where paused sandboxes are kept, each in a directory of its name. */
export function pausedRoot(): string {
  return path.join(cacheDir(), "paused");
}

/** Where the paused sandbox `name` is kept: its saved machine and paused.json. */
export function pausedDir(name: string): string {
  return path.join(pausedRoot(), name);
}

export function writePaused(dir: string, meta: Omit<PausedSandbox, "format" | "pausedAt">): void {
  const full: PausedSandbox = { format: FORMAT, ...meta, pausedAt: new Date().toISOString() };
  const tmp = path.join(dir, "paused.json.tmp");
  // Private: the options may carry secrets in env, as the state carries guest memory.
  writeFileSync(tmp, `${JSON.stringify(full, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, path.join(dir, "paused.json"));
}

export function readPaused(name: string, kind: string): { dir: string; meta: PausedSandbox } {
  const dir = pausedDir(checkName(name));
  let meta: PausedSandbox;
  try {
    meta = JSON.parse(readFileSync(path.join(dir, "paused.json"), "utf8")) as PausedSandbox;
  } catch {
    throw new PausedSandboxNotFoundError(`no paused sandbox named ${JSON.stringify(name)} in ${path.dirname(dir)}: pause() one first`);
  }
  const saved = meta.filesOnly ? hasFiles(dir) : existsSync(path.join(dir, "state")) && existsSync(path.join(dir, "machine.json"));
  if (meta.format !== FORMAT || !saved) {
    throw new InvalidArgumentError(`the paused sandbox ${JSON.stringify(name)} in ${dir} is incomplete or from another version: remove it`);
  }
  if (meta.kind !== kind) throw new InvalidArgumentError(`sandbox ${JSON.stringify(name)} was paused as a ${meta.kind}: resume it with ${meta.kind}.resume()`);
  meta.commands ??= [];
  const sessions = (list: unknown) => Array.isArray(list) && list.every((k) => Number.isInteger(k?.session) && Number.isInteger(k?.pid));
  const keepOk = sessions(meta.keep) && sessions(meta.commands) && meta.commands.every((c) => typeof c.command === "string" && typeof c.stdin === "boolean");
  if (meta.options?.name !== name || !keepOk) {
    throw new InvalidArgumentError(`the paused sandbox ${JSON.stringify(name)} in ${dir} has a damaged paused.json: remove the directory`);
  }
  return { dir, meta };
}

/**
 * Runs `fn` holding the lock of the paused name `name`, across processes: a pause and a resume of
 * one name, or two resumes, take turns, so a paused state is restored at most once.
 */
export function withPausedLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const dir = pausedDir(checkName(name));
  mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
  return withLock(dir, fn);
}

/** A fresh directory for pausing `name`; refuses when one is already paused under that name. */
export function newPausedDir(name: string): string {
  const dir = pausedDir(name);
  if (existsSync(path.join(dir, "paused.json"))) {
    throw new InvalidArgumentError(`a sandbox named ${JSON.stringify(name)} is already paused in ${dir}: resume it, or remove the directory`);
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}
