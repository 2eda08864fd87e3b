// buildImage: a base image plus steps, run in a microVM, stored as a new image. Each step is first
// looked up in the step cache by (the id of the image so far, the step; COPY by its sources'
// content); the first step that misses boots a VM from the image so far, and the rest run in it.
// After each step that changed files, the VM's changes since boot become a layer, so every step's
// result can be had again without the VM. The result is tagged only once it is whole: a failed
// build leaves its log (builds/logs/ in the cache) and whatever steps it cached, nothing else.
import path from "node:path";

import { AbortError, abortError, BuildError } from "../errors.js";
import { resolveImage } from "../images/sources.js";
import { ImageStore, imageConfig } from "../images/store.js";
import { checkKeys, keysOf } from "../keys.js";
import { checkCpus, checkMemory } from "../sandbox/options.js";
import { checkNetwork } from "../vm/netpolicy.js";
import { sourceDigest, walkSource } from "./copy.js";
import { BuildLog } from "./log.js";
import { type BuildOptions, type BuildSpec, type BuildStep, type BuiltImage, checkSpec, stepKind } from "./spec.js";
import { type BuildState, baseRaw, cachedState, cacheState, materialize, stateConfig, stateId, stepKey } from "./state.js";
import { BuildVm, guestPath } from "./vm.js";

const OPTION_KEYS = keysOf<BuildOptions>({ log: true, signal: true, noCache: true, memory: true, cpus: true, network: true, store: true });

/** How a step reads in logs and in the image's history (a COPY source by its content digest there). */
export function describeStep(step: BuildStep, copySource?: string): string {
  const kind = stepKind(step);
  const s = step as Record<string, unknown>;
  if (kind === "run") return `RUN ${s.run as string}`;
  if (kind === "copy") {
    const c = (step as Extract<BuildStep, { copy: unknown }>).copy;
    return `COPY ${c.user !== undefined ? `--chown=${c.user} ` : ""}${c.mode !== undefined ? `--chmod=${c.mode.toString(8)} ` : ""}${copySource ?? c.src} ${c.dest}`;
  }
  if (kind === "env")
    return `ENV ${Object.entries(s.env as Record<string, string>)
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join(" ")}`;
  return `${kind.toUpperCase()} ${typeof s[kind] === "string" ? (s[kind] as string) : JSON.stringify(s[kind])}`;
}

// What a COPY's cache key holds: its content (what the .dockerignore excludes is not in it) and
// options, and the source's name, which a file copied into a directory gets.
function copyKey(c: Extract<BuildStep, { copy: unknown }>["copy"], digest: string): unknown {
  const { ignore: _, ...rest } = c;
  return { copy: { ...rest, src: digest, name: path.basename(c.src) } };
}

// The state after a step that changes only the config.
function configured(state: BuildState, step: BuildStep, history: string): BuildState {
  const config = { ...state.config, env: [...state.config.env] };
  let cmdSet = state.cmdSet;
  if ("env" in step) {
    for (const [k, v] of Object.entries(step.env)) {
      const at = config.env.findIndex((e) => e.startsWith(`${k}=`));
      if (at >= 0) config.env[at] = `${k}=${v}`;
      else config.env.push(`${k}=${v}`);
    }
  } else if ("workdir" in step) config.workingDir = guestPath(step.workdir, config.workingDir);
  else if ("user" in step) config.user = step.user;
  else if ("cmd" in step) {
    config.cmd = [...step.cmd];
    cmdSet = true;
  } else if ("entrypoint" in step) {
    config.entrypoint = [...step.entrypoint];
    if (!cmdSet) delete config.cmd;
  }
  return { ...state, config, cmdSet, history: [...state.history, history] };
}

/** Builds `spec` into the image store under spec.tag. Throws BuildError when a step fails. */
export async function buildImage(spec: BuildSpec, opts: BuildOptions = {}): Promise<BuiltImage> {
  const tag = checkSpec(spec);
  checkKeys("build option", opts, OPTION_KEYS);
  const store = opts.store ?? new ImageStore();
  const vmOpts = { memory: checkMemory(opts.memory ?? 1024), cpus: checkCpus(opts.cpus ?? 1), network: checkNetwork(opts.network ?? "none") };
  const { signal } = opts;
  const base = await resolveImage(store, spec.from);
  let state: BuildState = {
    base: { id: base.id, rootfs: base.rootfs, raw: await baseRaw(base, store) },
    config: base.config,
    cmdSet: false,
    history: [],
  };
  const log = await BuildLog.open(store.root, opts.log);
  const steps: { cached: boolean }[] = [];
  let vm: BuildVm | undefined;
  let current = -1;
  try {
    for (const [i, step] of spec.steps.entries()) {
      current = i;
      if (signal?.aborted) throw abortError(signal);
      log.write({ step: i, kind: "step", text: describeStep(step) });
      const entries = "copy" in step ? await walkSource(step.copy.src, step.copy.ignore) : undefined;
      const digest = entries ? await sourceDigest(entries) : undefined;
      const key = stepKey(stateId(state), "copy" in step ? copyKey(step.copy, digest!) : step);
      const hit = opts.noCache ? undefined : await cachedState(store, key);
      if (hit) {
        state = hit;
        steps.push({ cached: true });
        log.write({ step: i, kind: "cached", text: describeStep(step) });
        continue;
      }
      const history = describeStep(step, digest);
      if (!("run" in step) && !("copy" in step)) state = configured(state, step, history);
      else {
        if (!vm && !state.layer) {
          // No files changed since the base: the VM boots it (the config so far is the state's).
          const b = state.base;
          vm = await BuildVm.boot({ ref: spec.from, id: b.id, rootfs: b.rootfs, config: imageConfig(b.raw) }, store, vmOpts);
        } else if (!vm) {
          // The image so far becomes the base the VM's changes are layered over.
          const image = await materialize(store, state);
          vm = await BuildVm.boot(image, store, vmOpts);
          state = { ...state, base: { id: image.id, rootfs: image.rootfs, raw: JSON.parse(stateConfig(state).toString()) }, history: [] };
          delete state.layer;
        }
        if ("run" in step) {
          const exit = await vm.run(
            step.run,
            state.config,
            step.buildArgs ?? {},
            (c) => log.write({ step: i, kind: c.stream, text: c.data.toString("utf8") }),
            signal,
          );
          if (signal?.aborted) throw abortError(signal);
          if (exit.exitCode !== 0) {
            const how = exit.exitCode === null ? `was killed by ${exit.signal}` : `exited with ${exit.exitCode}`;
            throw new BuildError(`build step ${i + 1} (${history}) ${how}; the build's output is in ${log.file}`, i, exit.exitCode, log.file);
          }
        } else {
          const failed = await vm.copy(entries!, step.copy.src, step.copy, state.config, store.root, signal);
          if (failed) throw new BuildError(`build step ${i + 1} (${describeStep(step)}) failed: ${failed}; the build's log is ${log.file}`, i, null, log.file);
        }
        state = { ...state, layer: await vm.archive(store.blobDir, signal), history: [...state.history, history] };
      }
      await cacheState(store, key, state);
      steps.push({ cached: false });
    }
    current = -1; // what fails from here on is no step's
    await vm?.stop();
    vm = undefined;
    const image = await materialize(store, state, tag);
    await log.done();
    return { ref: tag, id: image.id, steps };
  } catch (err) {
    await vm?.stop().catch(() => {});
    await log.keep();
    if (err instanceof BuildError || err instanceof AbortError || current < 0) throw err;
    throw new BuildError(
      `build step ${current + 1} (${describeStep(spec.steps[current]!)}) failed: ${(err as Error).message}; the build's log is ${log.file}`,
      current,
      null,
      log.file,
      { cause: err },
    );
  }
}
