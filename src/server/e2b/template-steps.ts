// What the SDK's Template builder sends to start a build (POST /v2/templates/:id/builds/:bid: a
// base, its steps, a start and a ready command), checked and turned into the library builder's
// steps. Every step the builder cannot do is refused by name; none is skipped.
import type { BuildStep } from "../../build/spec.js";
import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import type { BuildFiles } from "./template-files.js";

const START_KEYS = ["fromImage", "fromTemplate", "fromImageRegistry", "steps", "startCmd", "readyCmd", "force"] as const;
// type, args and force are the API's; filesHash names a copy's upload; the rest the SDK sends along with a copy.
const STEP_KEYS = ["type", "args", "force", "filesHash", "forceUpload", "resolveSymlinks", "gzip"] as const;

/** A step as the SDK numbers it (its first is 1: the base is 0), in the builder's terms. */
type Step = { n: number } & (
  | { run: string; user?: string }
  | { copy: Extract<BuildStep, { copy: unknown }>["copy"] }
  | { env: Record<string, string> }
  | { workdir: string }
  | { user: string }
);

/** A checked build start: where it starts from, its steps, and what a sandbox of it runs first. */
export interface BuildPlan {
  from: { template: string } | { image: string };
  steps: Step[];
  /** How each SDK step reads in the build's logs, by its number less one. */
  described: string[];
  startCmd?: string;
  readyCmd?: string;
  /** A step (or the whole template) said to skip the cache: the builder does not use it for this build. */
  noCache: boolean;
}

/** Checks the SDK's build start, finding each copy's source among `files`; InvalidArgumentError names what is wrong. */
export async function planBuild(body: Record<string, unknown>, files: BuildFiles): Promise<BuildPlan> {
  checkKeys("template build field", body, START_KEYS);
  if (body.fromImageRegistry !== undefined)
    throw new InvalidArgumentError(
      "fromImageRegistry (registry credentials) is not served here: pull the image on the server (msb pull) and build from it by name",
    );
  const { fromImage, fromTemplate } = body;
  if ((fromImage === undefined) === (fromTemplate === undefined))
    throw new InvalidArgumentError("a template build names its base: give fromImage or fromTemplate, not both");
  const base = fromImage ?? fromTemplate;
  if (typeof base !== "string" || !base) throw new InvalidArgumentError(`template base ${JSON.stringify(base)} is invalid: name an image or a template`);
  if (body.steps !== undefined && !Array.isArray(body.steps)) throw new InvalidArgumentError("template steps must be an array");
  const plan: BuildPlan = {
    from: fromImage !== undefined ? { image: base } : { template: base },
    steps: [],
    described: [],
    noCache: body.force === true,
  };
  for (const key of ["startCmd", "readyCmd"] as const) {
    const v = body[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== "string" || !v.trim()) throw new InvalidArgumentError(`${key} ${JSON.stringify(v)} is invalid: give a shell command`);
    plan[key] = v;
  }
  for (const [i, raw] of ((body.steps as unknown[] | undefined) ?? []).entries()) {
    const n = i + 1;
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new InvalidArgumentError(`template step ${n} is not an object`);
    checkKeys(`template step ${n} field`, raw, STEP_KEYS);
    const s = raw as { type?: unknown; args?: unknown; force?: unknown; filesHash?: unknown };
    const args = s.args ?? [];
    if (!Array.isArray(args) || !args.every((a) => typeof a === "string")) throw new InvalidArgumentError(`template step ${n}: args must be strings`);
    if (s.force === true) plan.noCache = true;
    plan.steps.push(await stepOf(n, String(s.type), args, s.filesHash, files));
    plan.described.push(describe(String(s.type), args));
  }
  return plan;
}

async function stepOf(n: number, type: string, args: string[], filesHash: unknown, files: BuildFiles): Promise<Step> {
  const want = (count: number, what: string) => {
    if (args.length < count || args.slice(0, count).some((a) => a === ""))
      throw new InvalidArgumentError(`template step ${n} (${type}) needs ${what}, got ${JSON.stringify(args)}`);
  };
  switch (type) {
    case "RUN": {
      want(1, "a command");
      if (args.length > 2) throw new InvalidArgumentError(`template step ${n} (RUN) takes a command and a user, got ${JSON.stringify(args)}`);
      return { n, run: args[0]!, ...(args[1] ? { user: args[1] } : {}) };
    }
    case "COPY": {
      want(2, "a source and a destination");
      if (args.length > 4)
        throw new InvalidArgumentError(`template step ${n} (COPY) takes a source, a destination, a user and a mode, got ${JSON.stringify(args)}`);
      const [src, dest, user, mode] = args as [string, string, string?, string?];
      if (typeof filesHash !== "string") throw new InvalidArgumentError(`template step ${n} (COPY ${src}) has no filesHash: upload its files first`);
      if (mode && !/^[0-7]{1,4}$/.test(mode)) throw new InvalidArgumentError(`template step ${n} (COPY ${src}): mode ${JSON.stringify(mode)} is not octal`);
      const copy = { src: await files.source(filesHash, src, dest), dest, ...(user ? { user } : {}), ...(mode ? { mode: Number.parseInt(mode, 8) } : {}) };
      return { n, copy };
    }
    case "ENV": {
      if (args.length === 0 || args.length % 2)
        throw new InvalidArgumentError(`template step ${n} (ENV) needs names and values in pairs, got ${JSON.stringify(args)}`);
      const env: Record<string, string> = {};
      for (let i = 0; i < args.length; i += 2) env[args[i]!] = args[i + 1]!;
      return { n, env };
    }
    case "WORKDIR":
      want(1, "a directory");
      return { n, workdir: args[0]! };
    case "USER":
      want(1, "a user");
      return { n, user: args[0]! };
    default:
      throw new InvalidArgumentError(
        `template step ${n} is of type ${JSON.stringify(type)}, which this server does not build: use RUN, COPY, ENV, WORKDIR or USER`,
      );
  }
}

// A step as the SDK's user wrote it (a copy by its source in the build context, not on this machine).
function describe(type: string, args: string[]): string {
  if (type === "RUN") return `RUN ${args[0]}${args[1] ? ` (as ${args[1]})` : ""}`;
  if (type === "ENV") return `ENV ${args.flatMap((a, i) => (i % 2 ? [] : [`${a}=${args[i + 1]}`])).join(" ")}`;
  if (type === "COPY") return `COPY ${args[0]} ${args[1]}`;
  return `${type} ${args[0]}`;
}

/**
 * The builder's steps for `plan` on a base whose user is `baseUser`, and which SDK step each one
 * is. A command run as another user switches to it and back, as the SDK's runCmd({ user }) does
 * for that command alone.
 */
export function builderSteps(plan: BuildPlan, baseUser: string): { steps: BuildStep[]; origin: number[] } {
  const steps: BuildStep[] = [];
  const origin: number[] = [];
  const add = (n: number, s: BuildStep) => {
    steps.push(s);
    origin.push(n);
  };
  let user = baseUser;
  for (const { n, ...s } of plan.steps) {
    if ("run" in s) {
      const as = s.user ?? user;
      if (as !== user) add(n, { user: as });
      add(n, { run: s.run });
      if (as !== user) add(n, { user });
    } else if ("user" in s) {
      user = s.user;
      add(n, { user: s.user });
    } else add(n, s);
  }
  return { steps, origin };
}
