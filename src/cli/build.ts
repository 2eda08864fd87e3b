// msb build: a Dockerfile (the subset src/build/dockerfile.ts takes) built into the image store,
// with progress on stderr: each step as "[N/M] INSTRUCTION", the output of RUN, and CACHED for a
// step taken from the cache.
import { readFile, stat } from "node:fs/promises";
import path from "node:path";

import { buildImage } from "../build/builder.js";
import { dockerfileSteps, parseDockerfile } from "../build/dockerfile.js";
import type { BuildLogEvent } from "../build/spec.js";
import { InvalidArgumentError } from "../errors.js";
import { parseReference } from "../images/reference.js";
import { resolveImage } from "../images/sources.js";
import { ImageStore } from "../images/store.js";
import { envRecord } from "../sandbox/options.js";
import type { Command } from "./spec.js";

const MAX_DOCKERFILE = 1024 * 1024;

// Step lines, each followed by its output or " CACHED"; output ends on a line of its own.
function progress(total: number): { log: (e: BuildLogEvent) => void; end: () => void } {
  const err = process.stderr;
  let atLineStart = true;
  const endLine = () => {
    if (!atLineStart) err.write("\n");
    atLineStart = true;
  };
  const log = (e: BuildLogEvent) => {
    if (e.kind === "step") {
      endLine();
      err.write(`[${e.step + 1}/${total}] ${e.text}`);
      atLineStart = false;
    } else if (e.kind === "cached") {
      err.write(" CACHED\n");
      atLineStart = true;
    } else {
      endLine();
      err.write(e.text);
      atLineStart = e.text.endsWith("\n");
    }
  };
  return { log, end: endLine };
}

// --build-arg NAME=VALUE, or NAME alone for the value in msb's environment (Docker drops one unset
// there; here it is an error, as a name no ARG declares is).
function buildArgs(given: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const a of given) {
    const eq = a.indexOf("=");
    const name = eq < 0 ? a : a.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      throw new InvalidArgumentError(`--build-arg ${JSON.stringify(a)}: give NAME=VALUE, NAME of letters, digits and '_'`);
    const value = eq < 0 ? process.env[name] : a.slice(eq + 1);
    if (value === undefined)
      throw new InvalidArgumentError(`--build-arg ${name} takes its value from msb's environment, where ${name} is not set: give ${name}=VALUE`);
    out[name] = value;
  }
  return out;
}

export const BUILD_COMMAND: Command = {
  name: "build",
  synopsis: "build -t NAME [-f Dockerfile] [options] [CONTEXT]",
  summary: "build an image from a Dockerfile in a microVM, into the local image store",
  description: `Build the Dockerfile (default CONTEXT/Dockerfile) into an image named NAME, which msb run NAME
and sandboxes then find locally. It takes ARG (before FROM too, for FROM $NAME), FROM (one stage),
RUN, COPY (--chown, --chmod; sources inside CONTEXT, default "."), ENV, WORKDIR, USER, CMD and
ENTRYPOINT; anything else is an error naming its line. COPY leaves out what CONTEXT/.dockerignore
excludes (Docker's rules). An ARG is in RUN's environment and in $NAME of later instructions, not
in the image's. RUN and COPY run in a microVM booted from the image so far (the image needs sh
and tar). Each step's result is cached: an unchanged step is CACHED, and a build whose steps are
all cached boots nothing. A failed step stops the build, stores nothing, and names the log kept.`,
  options: {
    tag: { type: "string", short: "t", value: "NAME", description: "the image's name, e.g. myapp or myapp:1 (required)" },
    file: { type: "string", short: "f", value: "FILE", default: "CONTEXT/Dockerfile", description: "the Dockerfile" },
    "build-arg": {
      type: "string",
      value: "NAME=VALUE",
      multiple: true,
      description: "an ARG's value (NAME alone: its value here); an ARG the Dockerfile does not declare is an error",
    },
    "no-cache": { type: "boolean", default: "off", description: "run every step, taking none from the cache" },
    memory: { type: "string", value: "MIB", number: "a whole number >= 1", default: "1024", description: "the build VM's RAM in MiB" },
    cpus: { type: "string", value: "N", number: "a number > 0", default: "1", description: "the build VM's CPU cores" },
    network: {
      type: "string",
      choices: ["none", "public", "all"],
      default: "none",
      description: "what RUN may reach: nothing; the internet but not the host or private addresses; everything",
    },
  },
  positionals: { name: "CONTEXT", min: 0, max: 1 },
  async handler({ values: v, positionals: [contextArg] }) {
    if (typeof v.tag !== "string") throw new InvalidArgumentError('msb build needs -t NAME: the name to store the image under, e.g. "-t myapp"');
    parseReference(v.tag); // a bad name fails before anything is pulled or parsed
    const context = path.resolve(contextArg ?? ".");
    const file = path.resolve((v.file as string | undefined) ?? path.join(context, "Dockerfile"));
    const size = (await stat(file).catch(() => undefined))?.size;
    if (size === undefined) throw new InvalidArgumentError(`no Dockerfile at ${file}: give one with -f FILE`);
    if (size > MAX_DOCKERFILE) throw new InvalidArgumentError(`${file} is ${size} bytes; more than ${MAX_DOCKERFILE} is not a Dockerfile`);
    const parsed = parseDockerfile(await readFile(file, "utf8"), buildArgs((v["build-arg"] as string[] | undefined) ?? []));
    const store = new ImageStore();
    // The base's environment, for $VAR in ENV, WORKDIR, USER and COPY.
    const base = await resolveImage(store, parsed.from);
    const steps = await dockerfileSteps(parsed, context, envRecord(base.config.env));
    const started = performance.now();
    const shown = progress(steps.length);
    const built = await buildImage(
      { from: parsed.from, steps, tag: v.tag },
      {
        store,
        log: shown.log,
        noCache: !!v["no-cache"],
        ...(v.memory !== undefined ? { memory: v.memory as number } : {}),
        ...(v.cpus !== undefined ? { cpus: v.cpus as number } : {}),
        ...(v.network ? { network: v.network as "none" | "public" | "all" } : {}),
      },
    ).finally(shown.end);
    const cached = built.steps.filter((s) => s.cached).length;
    process.stderr.write(`built in ${((performance.now() - started) / 1000).toFixed(1)} s, ${cached} of ${steps.length} steps cached\n`);
    console.log(`${built.ref} ${built.id.slice(0, 12)}`);
    return 0;
  },
};
