// The msb commands as a table: each one's synopsis, description, options (type, meaning,
// default) and handler. msb.ts parses the command line against it and the help text is made
// from it, so what --help says and what the parser accepts cannot drift apart.
import { writeFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import path from "node:path";
import type { ExitStatus } from "../agent-client/process.js";
import { type BenchResult, formatTable, PHASES, phaseValues, toJson } from "../bench/report.js";
import { type BenchMode, runBenchKernels } from "../bench/run.js";
import { cdfSvg } from "../bench/svg.js";
import { InvalidArgumentError, PausedSandboxNotFoundError } from "../errors.js";
import { parseReference } from "../images/reference.js";
import type { PullEvent } from "../images/registry.js";
import { pullImage, resolveImage } from "../images/sources.js";
import { ImageStore } from "../images/store.js";
import { CustomSandbox } from "../sandbox/kinds.js";
import { pausedDir } from "../sandbox/paused.js";
import { listVolumes, removeVolume } from "../sandbox/volumes.js";
import { pruneSnapshots } from "../vm/snapshot.js";
import { attach, DETACH_KEYS, terminalSize } from "./attach.js";
import { BUILD_COMMAND } from "./build.js";
import { doctor, formatDoctor } from "./doctor.js";
import { SERVER_COMMANDS } from "./server-commands.js";
import { type Command, column } from "./spec.js";

const IMAGE_NOTE = `IMAGE is a registry reference (python:3.12-slim), oci:DIR[:TAG], oci-archive:FILE[:TAG],
docker-archive:FILE, local:NAME (built by scripts/build-image.sh in a checkout), or a name
given to msb build.`;

// Sources that are imported from disk rather than pulled, so registry settings do not apply.
const NOT_A_REGISTRY = /^(local|oci|oci-archive|docker-archive):/;
const storeKey = (ref: string) => (NOT_A_REGISTRY.test(ref) ? ref : String(parseReference(ref)));
const insecureFor = (ref: string) => (NOT_A_REGISTRY.test(ref) ? {} : { registry: { insecure: [parseReference(ref).registry] } });
const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/** Pull progress: a redrawn bar per blob on a terminal, one line per finished blob otherwise. */
function progress(): (e: PullEvent) => void {
  const tty = process.stderr.isTTY;
  const rows = new Map<string, string>();
  let drawn = 0;
  const draw = () => {
    if (drawn) process.stderr.write(`\x1b[${drawn}A`);
    for (const line of rows.values()) process.stderr.write(`\x1b[2K${line}\n`);
    drawn = rows.size;
  };
  return (e) => {
    if (e.type === "resolved") return void process.stderr.write(`${e.ref}: ${e.digest} (${e.layers.length} layers)\n`);
    if (e.type === "done") return;
    const id = e.digest.slice(7, 19);
    if (!tty) {
      if (e.type === "layer-done" || e.type === "layer-cached")
        process.stderr.write(`${id}: ${e.type === "layer-cached" ? "cached" : "done"} ${mb(e.total)}\n`);
      return;
    }
    const width = 30;
    const fill = e.total ? Math.round((e.bytes / e.total) * width) : width;
    const state = e.type === "layer-cached" ? "cached" : e.type === "layer-done" ? "done" : `${mb(e.bytes)} / ${mb(e.total)}`;
    rows.set(id, `${id} [${"#".repeat(fill)}${"-".repeat(width - fill)}] ${state}`);
    draw();
  };
}

const list: Command[] = [
  {
    name: "pull",
    synopsis: "pull IMAGE [--insecure]",
    summary: "fetch an image from its registry (or import oci:/docker-archive: sources)",
    description: `Fetch IMAGE into the local image store and print its reference and id. Registry images are
verified blob by blob; oci:, oci-archive: and docker-archive: sources are imported from disk.

${IMAGE_NOTE}`,
    options: { insecure: { type: "boolean", description: "allow plain HTTP to IMAGE's registry", default: "off" } },
    positionals: { name: "IMAGE", min: 1, max: 1 },
    async handler({ values, positionals: [ref] }) {
      const opts = { ...(values.insecure ? insecureFor(ref!) : {}), onEvent: progress() };
      const store = new ImageStore();
      const image = NOT_A_REGISTRY.test(ref!) ? await resolveImage(store, ref!, opts) : await pullImage(store, storeKey(ref!), opts);
      console.log(`${image.ref} ${image.id.slice(0, 12)}`);
      return 0;
    },
  },
  {
    name: "images",
    synopsis: "images",
    summary: "list stored images with their sizes",
    description: "List the images in the local store: reference, id and size.",
    options: {},
    positionals: { min: 0, max: 0 },
    async handler() {
      const images = await new ImageStore().list();
      console.log(["REFERENCE".padEnd(60), "ID".padEnd(12), "SIZE"].join("  "));
      for (const i of images) console.log([i.ref.padEnd(60), i.id.slice(0, 12).padEnd(12), mb(i.size)].join("  "));
      return 0;
    },
  },
  {
    name: "rmi",
    synopsis: "rmi IMAGE...",
    summary: "remove images",
    description: `Remove each IMAGE's reference from the local store; exit status 1 if one is not there.
msb prune then frees the space.

${IMAGE_NOTE}`,
    options: {},
    positionals: { name: "IMAGE", min: 1, max: Infinity },
    async handler({ positionals }) {
      const store = new ImageStore();
      let status = 0;
      for (const ref of positionals) {
        const key = storeKey(ref);
        if (await store.remove(key)) console.log(`removed ${key}`);
        else console.error(`msb: no image ${key}`), (status = 1);
      }
      return status;
    },
  },
  {
    name: "prune",
    synopsis: "prune",
    summary: "remove everything no image reference needs",
    description: `Remove the images, disks and blobs no image reference names, the memory snapshots of images
that are gone, and print the space freed.`,
    options: {},
    positionals: { min: 0, max: 0 },
    async handler() {
      const store = new ImageStore();
      const freed = (await store.prune()) + (await pruneSnapshots(await store.imageIds()));
      console.log(`freed ${mb(freed)}`);
      return 0;
    },
  },
  {
    name: "doctor",
    synopsis: "doctor [--json]",
    summary: "what this host has and lacks for each backend",
    description: `Show what this host has and lacks for each backend (libkrun, QEMU), with possible solutions,
and which backend a sandbox would boot on for each network mode. Exit status 1 if no backend
is usable.`,
    options: { json: { type: "boolean", description: "print the report as JSON", default: "text" } },
    positionals: { min: 0, max: 0 },
    async handler({ values }) {
      const report = await doctor();
      console.log(values.json ? JSON.stringify(report, null, 2) : formatDoctor(report));
      return report.backends.krun.usable || report.backends.qemu.usable ? 0 : 1;
    },
  },
  {
    name: "bench",
    synopsis: "bench [options]",
    summary: "boot-latency benchmark: create() -> first output, phase by phase, next to a floor",
    description: `Measure boot latency, create() -> first command output, phase by phase (host prep, VMM
start, kernel -> init, agent ready, first output, stop), next to a floor: the same kernel and
VMM booting a trivial init. Prints a table; progress goes to stderr.`,
    options: {
      mode: {
        type: "string",
        choices: ["sequential", "burst", "staggered"],
        default: "sequential",
        description: "one after another; all at once; or started --spacing apart",
      },
      runs: { type: "string", value: "N", number: "a whole number >= 1", default: "10", description: "sandboxes to boot" },
      spacing: { type: "string", value: "MS", number: "a number >= 0", default: "500", description: "milliseconds between starts in staggered mode" },
      image: { type: "string", value: "IMAGE", default: "local:busybox", description: "the image to boot" },
      memory: { type: "string", value: "MIB", number: "a whole number >= 1", default: "256", description: "guest RAM in MiB" },
      backend: { type: "string", choices: ["auto", "krun", "qemu"], default: "auto", description: "the VMM" },
      kernel: {
        type: "string",
        value: "FILE",
        multiple: true,
        default: "ours",
        description: "the guest kernel (QEMU); given twice or more, the kernels are compared side by side, run by run",
      },
      snapshot: { type: "boolean", default: "off", description: "restore each sandbox from a memory snapshot instead of booting it" },
      compare: { type: "string", value: "CMD", default: "none", description: "a shell command timed --runs times beside, for comparison" },
      output: { type: "string", value: "FILE.json", default: "none", description: "also write the results as JSON" },
      svg: { type: "string", value: "FILE", default: "none", description: "also write a CDF picture of the phases as SVG" },
    },
    positionals: { min: 0, max: 0 },
    async handler({ values: v }) {
      const results = await runBenchKernels({
        mode: (v.mode ?? "sequential") as BenchMode,
        runs: (v.runs as number | undefined) ?? 10,
        ...(v.spacing !== undefined ? { spacingMs: v.spacing as number } : {}),
        ...(v.image ? { image: v.image as string } : {}),
        ...(v.memory !== undefined ? { memory: v.memory as number } : {}),
        ...(v.backend ? { backend: v.backend as "auto" | "krun" | "qemu" } : {}),
        ...(v.compare ? { compare: v.compare as string } : {}),
        ...(v.kernel ? { kernels: (v.kernel as string[]).map((k) => path.resolve(k)) } : {}),
        snapshot: !!v.snapshot,
        onRun: (i, r) => process.stderr.write(`run ${i + 1}: ${r.ok ? `first output at ${r.firstOutput!.toFixed(0)} ms` : `failed: ${r.error}`}\n`),
      });
      console.log(results.map(formatTable).join("\n"));
      if (v.output) writeFileSync(v.output as string, `${JSON.stringify(results.length === 1 ? toJson(results[0]!) : results.map(toJson), null, 2)}\n`);
      if (v.svg) {
        // Several kernels: each one's first output and floor, one picture.
        const tag = (r: BenchResult) => (results.length > 1 ? ` (${path.basename(path.dirname(r.kernel!))}/${path.basename(r.kernel!)})` : "");
        const series = results.flatMap((r) => [
          ...PHASES.filter((p) => p.key !== "stop" && (results.length === 1 || p.key === "firstOutput")).map((p) => ({
            name: p.label + tag(r),
            values: phaseValues(r, p.key),
          })),
          ...(r.floor.length ? [{ name: `floor (trivial init)${tag(r)}`, values: r.floor }] : []),
        ]);
        const first = results[0]!;
        writeFileSync(
          v.svg as string,
          cdfSvg(series, { title: `${first.backend}, ${first.mode}, ${first.runs.length} runs${results.length > 1 ? ` per kernel` : ""}`, unit: "ms" }),
        );
      }
      return results.every((r) => r.runs.every((run) => run.ok)) ? 0 : 1;
    },
  },
  {
    name: "run",
    synopsis: "run IMAGE [options] [-- CMD ARG...]",
    summary: "boot a sandbox from IMAGE and run CMD (default: the image's Entrypoint + Cmd)",
    description: `Boot a sandbox from IMAGE (pulled if missing), run CMD in it and stop it. CMD's output and exit
status are passed through (128 + N if signal N killed it). Everything after -- is CMD and its
arguments, untouched; without --, the image's Entrypoint + Cmd run. With -i CMD reads this
process's stdin; with -t it runs on a terminal attached to this one (raw mode, resizes follow,
${DETACH_KEYS} detaches and stops the sandbox); -it for a shell.

${IMAGE_NOTE}`,
    options: {
      memory: { type: "string", value: "MIB", number: "a whole number >= 1", default: "512", description: "guest RAM in MiB" },
      cpus: { type: "string", value: "N", number: "a number > 0", default: "1", description: "CPU cores; fractions round up" },
      network: {
        type: "string",
        choices: ["none", "public", "all"],
        default: "none",
        description: "no network; the internet but not the host or private addresses; or everything",
      },
      timeout: { type: "string", value: "SECONDS", number: "a number > 0", default: "none", description: "kill CMD after this long" },
      insecure: { type: "boolean", description: "allow plain HTTP to IMAGE's registry when pulling", default: "off" },
      interactive: { type: "boolean", short: "i", description: "pass this process's stdin to CMD", default: "off" },
      tty: { type: "boolean", short: "t", description: "run CMD on a terminal attached to this one", default: "off" },
    },
    positionals: { name: "IMAGE", min: 1, max: 1 },
    takesCommand: true,
    async handler({ values: v, positionals: [image], command }) {
      const sandbox = new CustomSandbox({
        image: image!,
        ...(v.memory !== undefined ? { memory: v.memory as number } : {}),
        ...(v.cpus !== undefined ? { cpus: v.cpus as number } : {}),
        ...(v.network ? { network: v.network as "none" | "public" | "all" } : {}),
        ...(v.insecure ? insecureFor(image!) : {}),
      });
      await sandbox.start();
      try {
        const cmd = command ?? sandbox.defaultCommand();
        const opts = {
          ...(v.timeout !== undefined ? { timeout: v.timeout as number } : {}),
          ...(v.interactive ? { stdin: true } : {}),
          ...(v.tty ? { pty: terminalSize() } : {}),
        };
        const proc = sandbox.command.spawn(cmd[0]!, cmd.slice(1), opts);
        if (v.tty || v.interactive) {
          const { exit } = await attach(proc, !!v.tty);
          if (!exit) process.stderr.write(`\r\nmsb: detached; stopping sandbox ${sandbox.name}\r\n`);
          return exit ? exitStatus(exit) : 0;
        }
        for await (const chunk of proc) (chunk.stream === "stdout" ? process.stdout : process.stderr).write(chunk.data);
        return exitStatus(await proc.exit);
      } finally {
        await sandbox.stop();
      }
    },
  },
  {
    name: "volume",
    synopsis: "volume ls | volume rm NAME...",
    summary: "list the persistent volumes, or remove some",
    description: `Volumes are ext4 images in the cache (volumes/NAME.ext4) that sandboxes mount with the volumes
option; they outlive sandboxes. ls shows each one's size, the host disk it takes (they are sparse)
and the sandboxes using it now; rm removes a volume and its data, refused while one is in use.`,
    options: {},
    positionals: { name: "ls | rm NAME...", min: 1, max: Infinity },
    async handler({ positionals: [sub, ...names] }) {
      if (sub === "ls" && !names.length) {
        const rows = listVolumes().map((v) => [
          v.name,
          mb(v.sizeBytes),
          mb(v.diskBytes),
          v.users.map((u) => `${u.sandbox} (pid ${u.pid}${u.readOnly ? ", ro" : ""})`).join(", ") || "-",
        ]);
        process.stdout.write(
          rows.length
            ? `${column([["NAME", "SIZE  ON DISK  USED BY"], ...rows.map(([n, ...r]) => [n!, r.join("  ")] as [string, string])])}\n`
            : "no volumes\n",
        );
        return 0;
      }
      if (sub === "rm" && names.length) {
        for (const name of names) await removeVolume(name);
        return 0;
      }
      throw new InvalidArgumentError(`msb volume takes "ls", or "rm" and volume names; got ${JSON.stringify([sub, ...names].join(" "))}`);
    },
  },
  {
    name: "shell",
    synopsis: "shell NAME [--image IMAGE] [--stop]",
    summary: "a shell in the persistent sandbox NAME: resumed if paused, made from IMAGE if new, paused again after",
    description: `Attach this terminal to a shell (bash, else sh) in the sandbox NAME. A sandbox paused under that
name (msb shell, or pause() of a CustomSandbox) is resumed with its memory, processes and files;
otherwise one is made from --image. When the shell exits, or on ${DETACH_KEYS}, the sandbox is
paused again (to ${pausedDir("NAME")}) for the next msb shell NAME, or stopped with --stop.
QEMU only (pause).

${IMAGE_NOTE}`,
    options: {
      image: { type: "string", value: "IMAGE", description: "the image of a new sandbox" },
      memory: { type: "string", value: "MIB", number: "a whole number >= 1", default: "512", description: "guest RAM of a new sandbox in MiB" },
      network: { type: "string", choices: ["none", "public", "all"], default: "none", description: "the network of a new sandbox" },
      stop: { type: "boolean", description: "stop the sandbox at the end instead of pausing it", default: "off" },
    },
    positionals: { name: "NAME", min: 1, max: 1 },
    async handler({ values: v, positionals: [name] }) {
      let sandbox: CustomSandbox;
      try {
        sandbox = await CustomSandbox.resume(name!);
      } catch (err) {
        if (!(err instanceof PausedSandboxNotFoundError)) throw err;
        if (!v.image) throw new InvalidArgumentError(`no paused sandbox named ${JSON.stringify(name)}: give --image IMAGE to make one`);
        sandbox = await CustomSandbox.create({
          name: name!,
          image: v.image as string,
          backend: "qemu",
          ...(v.memory !== undefined ? { memory: v.memory as number } : {}),
          ...(v.network ? { network: v.network as "none" | "public" | "all" } : {}),
        });
      }
      try {
        const bash = await sandbox.fs.stat("/bin/bash").then(
          () => true,
          () => false,
        );
        const proc = sandbox.command.spawn(bash ? "/bin/bash" : "/bin/sh", ["-l"], { pty: terminalSize() });
        const { exit } = await attach(proc, true);
        if (!v.stop) {
          await sandbox.pause();
          process.stderr.write(`\r\nmsb: ${exit ? "" : "detached; "}sandbox ${name} paused: msb shell ${name} resumes it\r\n`);
        }
        return exit ? exitStatus(exit) : 0;
      } finally {
        await sandbox.stop(); // nothing left to stop after a pause
      }
    },
  },
];

// A process's exit code; a signal's death gets the shell's status: 128 + its number.
const exitStatus = (exit: ExitStatus) => exit.exitCode ?? 128 + (osConstants.signals[exit.signal as NodeJS.Signals] ?? 9);

export const COMMANDS = new Map([...list, BUILD_COMMAND, ...SERVER_COMMANDS].map((c) => [c.name, c]));
export { type Command, type Invocation, NUMBER_KINDS, type Values } from "./spec.js";

export function generalUsage(): string {
  return `usage: msb <command> [options]

commands:
${column([...COMMANDS.values()].map((c) => [c.name, c.summary]))}

msb <command> --help (or msb help <command>) shows a command's synopsis and options.`;
}

export function commandUsage(cmd: Command): string {
  const rows: [string, string][] = Object.entries(cmd.options).map(([name, o]) => {
    const value = o.choices ? ` ${o.choices.join("|")}` : o.value ? ` ${o.value}` : "";
    return [`${o.short ? `-${o.short}, ` : ""}--${name}${value}`, `${o.description}${o.default ? ` (default: ${o.default})` : ""}`];
  });
  rows.push(["-h, --help", "show this help"]);
  return `usage: msb ${cmd.synopsis}\n\n${cmd.description}\n\noptions:\n${column(rows)}`;
}
