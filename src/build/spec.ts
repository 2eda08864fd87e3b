// What a build is made of: a base image, steps in order, a tag; and what buildImage() takes and
// gives back. Checked here, before any VM starts, with messages that name the step and the value.
import { InvalidArgumentError } from "../errors.js";
import { parseReference } from "../images/reference.js";
import type { ImageStore } from "../images/store.js";
import { checkKeys, keysOf } from "../keys.js";
import type { NetworkPolicy } from "../vm/netpolicy.js";
import type { ContextIgnore } from "./ignore.js";

export type BuildStep =
  /**
   * `/bin/sh -c` as the current user, in the current workdir, with the environment so far and
   * `buildArgs` (a Dockerfile's ARGs: in this step's environment only, not the image's; the
   * image's environment wins over them).
   */
  | { run: string; buildArgs?: Record<string, string> }
  /**
   * An absolute host path (file or directory) the caller vouches for, to `dest` in the guest (a
   * relative dest is taken from the workdir). A directory's contents go into dest; a file goes
   * to dest, or into it when dest ends with "/" or is a directory. Owned by `user` ("name[:group]" or ids, default
   * root), with `mode` if given (every file and directory copied). With `ignore`, what a
   * .dockerignore excludes is not copied, nor part of the step's cache key.
   */
  | { copy: { src: string; dest: string; user?: string; mode?: number; ignore?: ContextIgnore } }
  | { env: Record<string, string> }
  | { workdir: string }
  | { user: string }
  | { cmd: string[] }
  | { entrypoint: string[] };

export interface BuildSpec {
  /** Any reference resolveImage takes: "local:python", "python:3.12-slim", a tag built before. */
  from: string;
  steps: BuildStep[];
  /** The reference the result is stored under ("myapp", "myapp:1"); `msb run myapp` finds it. */
  tag: string;
}

export interface BuildLogEvent {
  /** Index into spec.steps. */
  step: number;
  /** "step": the step begins (text describes it); "cached": it was taken from the cache. */
  kind: "step" | "stdout" | "stderr" | "cached";
  text: string;
}

export interface BuildOptions {
  log?: (event: BuildLogEvent) => void;
  /** Aborting stops the build (and its VM); nothing of it is kept. */
  signal?: AbortSignal;
  /** Run every step, looking nothing up in the step cache (results still go into it). */
  noCache?: boolean;
  /** Guest RAM in MiB of the build VM. Default 1024. */
  memory?: number;
  cpus?: number;
  /** What RUN steps may reach (a sandbox's `network`). Default "none". */
  network?: NetworkPolicy;
  /** Where the base image is found and the result goes. Default: the user's cache. */
  store?: ImageStore;
}

export interface BuiltImage {
  /** The reference it was stored under, normalised ("docker.io/library/myapp:latest"). */
  ref: string;
  /** The image id (its config digest, hex). */
  id: string;
  /** Per step of spec.steps: whether it was taken from the cache. */
  steps: { cached: boolean }[];
}

const STEP_KINDS = ["run", "copy", "env", "workdir", "user", "cmd", "entrypoint"] as const;
export type StepKind = (typeof STEP_KINDS)[number];
const COPY_KEYS = keysOf<Extract<BuildStep, { copy: unknown }>["copy"]>({ src: true, dest: true, user: true, mode: true, ignore: true });
const SPEC_KEYS = keysOf<BuildSpec>({ from: true, steps: true, tag: true });

const bad = (i: number, why: string) => new InvalidArgumentError(`build step ${i + 1}: ${why}`);
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === "string" && !s.includes("\0"));
const inside = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith("/") ? dir : `${dir}/`);
const text = (v: unknown) => typeof v === "string" && v !== "" && !v.includes("\0");

/** The kind of a step (its one key of STEP_KINDS). */
export function stepKind(step: BuildStep): StepKind {
  return Object.keys(step).find((k) => STEP_KINDS.includes(k as StepKind)) as StepKind;
}

/** Checks a spec; returns the tag as the store keeps it. */
export function checkSpec(spec: BuildSpec): string {
  if (spec === null || typeof spec !== "object") throw new InvalidArgumentError("a build spec must be an object { from, steps, tag }");
  checkKeys("build spec field", spec, SPEC_KEYS);
  if (!text(spec.from)) throw new InvalidArgumentError(`build from ${JSON.stringify(spec.from)} is invalid: name an image such as "local:busybox"`);
  if (typeof spec.tag !== "string" || /^(local|oci|oci-archive|docker-archive):/.test(spec.tag) || spec.tag.includes("@")) {
    throw new InvalidArgumentError(`build tag ${JSON.stringify(spec.tag)} is invalid: give a name such as "myapp" or "myapp:1" (no digest, no local:)`);
  }
  const tag = String(parseReference(spec.tag));
  if (!Array.isArray(spec.steps)) throw new InvalidArgumentError("build steps must be an array");
  for (const [i, step] of spec.steps.entries()) checkStep(step, i);
  return tag;
}

// An object of variables: names of letters, digits and '_', string values.
function checkVars(i: number, what: string, vars: unknown): void {
  if (vars === null || typeof vars !== "object" || Array.isArray(vars)) throw bad(i, `${what} needs an object of string values`);
  for (const [k, v] of Object.entries(vars)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || typeof v !== "string" || v.includes("\0"))
      throw bad(i, `${what} ${JSON.stringify(k)} is invalid: names of letters, digits and '_', string values`);
  }
}

function checkStep(step: BuildStep, i: number): void {
  // A run step may also have buildArgs.
  const keys = step && typeof step === "object" ? Object.keys(step).filter((k) => !(k === "buildArgs" && "run" in step)) : [];
  if (keys.length !== 1 || !STEP_KINDS.includes(keys[0] as StepKind)) {
    throw bad(i, `${JSON.stringify(step)} is not a step: give exactly one of ${STEP_KINDS.join(", ")}`);
  }
  const s = step as Record<string, unknown>;
  switch (keys[0] as StepKind) {
    case "run":
      if (!text(s.run)) throw bad(i, "run needs a non-empty shell command");
      if (s.buildArgs !== undefined) checkVars(i, "run buildArgs", s.buildArgs);
      return;
    case "copy": {
      const c = s.copy as Record<string, unknown>;
      if (c === null || typeof c !== "object") throw bad(i, "copy needs { src, dest }");
      checkKeys(`build step ${i + 1} copy field`, c, COPY_KEYS);
      if (typeof c.src !== "string" || !c.src.startsWith("/")) throw bad(i, `copy src ${JSON.stringify(c.src)} must be an absolute host path`);
      if (!text(c.dest)) throw bad(i, `copy dest ${JSON.stringify(c.dest)} must be a guest path`);
      if (c.user !== undefined && !/^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$/.test(String(c.user)))
        throw bad(i, `copy user ${JSON.stringify(c.user)} must be "user", "user:group" or ids`);
      if (c.mode !== undefined && (!Number.isInteger(c.mode) || (c.mode as number) < 0 || (c.mode as number) > 0o7777))
        throw bad(i, `copy mode ${JSON.stringify(c.mode)} must be permission bits (0 to 0o7777)`);
      const g = c.ignore as Record<string, unknown> | undefined;
      if (g !== undefined && (g === null || typeof g.context !== "string" || !inside(c.src, g.context) || !isStrings(g.patterns)))
        throw bad(i, "copy ignore needs { context: the host directory src is in, patterns: its .dockerignore's lines }");
      return;
    }
    case "env":
      checkVars(i, "env", s.env);
      return;
    case "workdir":
      if (!text(s.workdir)) throw bad(i, "workdir needs a guest path");
      return;
    case "user":
      if (!text(s.user) || /\s/.test(s.user as string)) throw bad(i, `user ${JSON.stringify(s.user)} must be "name", "uid" or "user:group"`);
      return;
    case "cmd":
    case "entrypoint":
      if (!isStrings(s[keys[0]!])) throw bad(i, `${keys[0]} needs an array of strings`);
      return;
  }
}
