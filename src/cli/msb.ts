#!/usr/bin/env node
// msb: the command line. pull / images / rmi / prune manage the image store; run boots a
// sandbox from an image and runs a command (or the image's default) in it.
import { writeFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { parseArgs } from "node:util";

import { MicrosandboxError } from "../errors.js";
import { doctor, formatDoctor } from "./doctor.js";
import { type BenchMode, runBench } from "../bench/run.js";
import { formatTable, PHASES, phaseValues, toJson } from "../bench/report.js";
import { cdfSvg } from "../bench/svg.js";
import type { PullEvent } from "../images/registry.js";
import { pullImage, resolveImage } from "../images/sources.js";
import { ImageStore } from "../images/store.js";
import { parseReference } from "../images/reference.js";
import { CustomSandbox } from "../sandbox/sandbox.js";

const USAGE = `usage: msb <command> [options]

  pull IMAGE [--insecure]          fetch an image from its registry (or import oci:/docker-archive: sources)
  images                           list stored images with their sizes
  rmi IMAGE...                     remove images
  prune                            remove everything no image reference needs
  doctor [--json]                  what this host has and lacks for each backend
  bench [--mode sequential|burst|staggered] [--runs N] [--spacing MS] [--image IMAGE]
        [--backend auto|krun|qemu] [--compare CMD] [--output FILE.json] [--svg FILE]
                                   boot-latency benchmark: create() -> first output, phase by phase, next to a floor
  run IMAGE [options] [-- CMD ARG...]
                                   boot a sandbox from IMAGE and run CMD (default: the image's Entrypoint + Cmd)
      --memory MIB  --cpus N  --network none|all  --timeout SECONDS  --insecure

IMAGE is a registry reference (python:3.12-slim), oci:DIR[:TAG], oci-archive:FILE[:TAG],
docker-archive:FILE, or local:NAME (built by scripts/build-image.sh).`;

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
      if (e.type === "layer-done" || e.type === "layer-cached") process.stderr.write(`${id}: ${e.type === "layer-cached" ? "cached" : "done"} ${mb(e.total)}\n`);
      return;
    }
    const width = 30;
    const fill = e.total ? Math.round((e.bytes / e.total) * width) : width;
    const state = e.type === "layer-cached" ? "cached" : e.type === "layer-done" ? "done" : `${mb(e.bytes)} / ${mb(e.total)}`;
    rows.set(id, `${id} [${"#".repeat(fill)}${"-".repeat(width - fill)}] ${state}`);
    draw();
  };
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const store = new ImageStore();
  const sep = rest.indexOf("--");
  const { values, positionals } = parseArgs({
    args: sep === -1 ? rest : rest.slice(0, sep),
    allowPositionals: true,
    options: {
      insecure: { type: "boolean" },
      memory: { type: "string" },
      cpus: { type: "string" },
      network: { type: "string" },
      timeout: { type: "string" },
      json: { type: "boolean" },
      output: { type: "string" },
      mode: { type: "string" },
      runs: { type: "string" },
      spacing: { type: "string" },
      image: { type: "string" },
      backend: { type: "string" },
      compare: { type: "string" },
      svg: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const registry = (ref: string) => (values.insecure ? { insecure: [parseReference(ref).registry] } : {});
  switch (command) {
    case "pull": {
      const [ref] = positionals;
      if (!ref) break;
      const opts = { registry: registry(ref), onEvent: progress() };
      const image = /^(local|oci|oci-archive|docker-archive):/.test(ref)
        ? await resolveImage(store, ref, opts)
        : await pullImage(store, String(parseReference(ref)), opts);
      console.log(`${image.ref} ${image.id.slice(0, 12)}`);
      return 0;
    }
    case "images": {
      const images = await store.list();
      console.log(["REFERENCE".padEnd(60), "ID".padEnd(12), "SIZE"].join("  "));
      for (const i of images) console.log([i.ref.padEnd(60), i.id.slice(0, 12).padEnd(12), mb(i.size)].join("  "));
      return 0;
    }
    case "rmi": {
      if (!positionals.length) break;
      let status = 0;
      for (const ref of positionals) {
        const key = /^(local|oci|oci-archive|docker-archive):/.test(ref) ? ref : String(parseReference(ref));
        if (await store.remove(key)) console.log(`removed ${key}`);
        else (console.error(`msb: no image ${key}`), (status = 1));
      }
      return status;
    }
    case "doctor": {
      const report = await doctor();
      console.log(values.json ? JSON.stringify(report, null, 2) : formatDoctor(report));
      return report.backends.krun.usable || report.backends.qemu.usable ? 0 : 1;
    }
    case "bench": {
      const result = await runBench({
        mode: (values.mode ?? "sequential") as BenchMode,
        runs: Number(values.runs ?? 10),
        ...(values.spacing ? { spacingMs: Number(values.spacing) } : {}),
        ...(values.image ? { image: values.image } : {}),
        ...(values.memory ? { memory: Number(values.memory) } : {}),
        ...(values.backend ? { backend: values.backend as "auto" | "krun" | "qemu" } : {}),
        ...(values.compare ? { compare: values.compare } : {}),
        onRun: (i, r) => process.stderr.write(`run ${i + 1}: ${r.ok ? `first output at ${r.firstOutput!.toFixed(0)} ms` : `failed: ${r.error}`}\n`),
      });
      console.log(formatTable(result));
      if (values.output) writeFileSync(values.output, JSON.stringify(toJson(result), null, 2) + "\n");
      if (values.svg) {
        const series = PHASES.filter((p) => p.key !== "stop").map((p) => ({ name: p.label, values: phaseValues(result, p.key) }));
        if (result.floor.length) series.push({ name: "floor (trivial init)", values: result.floor });
        writeFileSync(values.svg, cdfSvg(series, { title: `${result.backend}, ${result.mode}, ${result.runs.length} runs`, unit: "ms" }));
      }
      return result.runs.every((r) => r.ok) ? 0 : 1;
    }
    case "prune":
      console.log(`freed ${mb(await store.prune())}`);
      return 0;
    case "run": {
      const [image] = positionals;
      if (!image) break;
      const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
      const sandbox = new CustomSandbox({
        image,
        ...(values.memory ? { memory: num(values.memory)! } : {}),
        ...(values.cpus ? { cpus: num(values.cpus)! } : {}),
        ...(values.network ? { network: values.network as "none" | "all" } : {}),
      });
      await sandbox.start();
      try {
        const cmd = sep === -1 ? sandbox.defaultCommand() : rest.slice(sep + 1);
        const proc = sandbox.command.spawn(cmd[0]!, cmd.slice(1), values.timeout ? { timeout: Number(values.timeout) } : {});
        for await (const chunk of proc) (chunk.stream === "stdout" ? process.stdout : process.stderr).write(chunk.data);
        const exit = await proc.exit;
        // A signal's death gets the shell's status: 128 + its number.
        return exit.exitCode ?? 128 + (osConstants.signals[exit.signal as NodeJS.Signals] ?? 9);
      } finally {
        await sandbox.stop();
      }
    }
  }
  console.error(USAGE);
  return command === undefined || values.help ? 0 : 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`msb: ${err instanceof MicrosandboxError ? err.message : String((err as Error)?.stack ?? err)}`);
    process.exit(1);
  },
);
