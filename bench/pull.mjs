#!/usr/bin/env node
// Pull benchmark: pull + unpack of a Python image from a local registry (Debian's docker-registry
// on 127.0.0.1) next to `skopeo copy` + `umoci unpack` of the same image in the same run; then the
// ext4 materialization, and the host prep of a second create() from the cached image.
// Writes bench/results/pull.{json,md}.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CustomSandbox, ImageStore, pullImage } from "../dist/index.js";
import { ociLayout } from "../scripts/oci-layout.mjs";
import { machine, median } from "./common.mjs";

const RUNS = Number(process.env.MSB_BENCH_RUNS ?? 5);
const here = path.dirname(fileURLToPath(import.meta.url));
const work = mkdtempSync(path.join(os.tmpdir(), "msb-pull-bench-"));
// Each timed step starts with no dirty pages of the one before: on this disk, writeback of 150 MB
// lands on whoever writes next.
const time = async (fn) => {
  execFileSync("sync");
  const t = performance.now();
  await fn();
  return performance.now() - t;
};

// The image: the Debian python rootfs scripts/build-image.sh makes, as one gzipped layer.
const rootfs = (await new ImageStore().lookup("local:python")).rootfs;
const layout = path.join(work, "layout");
const layerBytes = ociLayout({ rootfs, layout, tag: "bench", config: { Env: ["PATH=/usr/local/bin:/usr/bin:/bin"], Cmd: ["python3"] } });

// A real registry on loopback.
const port = 20000 + Math.floor(Math.random() * 20000);
const host = `127.0.0.1:${port}`;
writeFileSync(
  path.join(work, "registry.yml"),
  JSON.stringify({ version: 0.1, storage: { filesystem: { rootdirectory: path.join(work, "storage") } }, http: { addr: host } }),
);
const registry = spawn("docker-registry", ["serve", path.join(work, "registry.yml")], { stdio: "ignore" });
for (let i = 0; ; i++) {
  try {
    if ((await fetch(`http://${host}/v2/`)).ok) break;
  } catch {
    if (i > 200) throw new Error("docker-registry did not start");
  }
  await new Promise((r) => setTimeout(r, 50));
}
const ref = `${host}/bench/python:bench`;
execFileSync("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:bench`, `docker://${ref}`]);

const ours = [];
const disks = [];
const theirs = [];
for (let i = 0; i < RUNS; i++) {
  const store = new ImageStore(path.join(work, `store-${i}`));
  let image;
  ours.push(await time(async () => (image = await pullImage(store, ref, { registry: { insecure: [host] } }))));
  disks.push(await time(() => store.disk(image)));
  const oci = path.join(work, `skopeo-${i}`);
  theirs.push(
    await time(async () => {
      execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `oci:${oci}:bench`]);
      execFileSync("umoci", ["unpack", "--image", `${oci}:bench`, path.join(work, `bundle-${i}`)]);
    }),
  );
  const unpacked = Number(execFileSync("sh", ["-c", 'find "$1" | wc -l', "sh", path.join(work, `bundle-${i}`, "rootfs")]).toString());
  if (Math.abs(unpacked - Number(execFileSync("sh", ["-c", 'find "$1" | wc -l', "sh", image.rootfs]).toString())) > 10) {
    throw new Error(`umoci unpacked ${unpacked} entries; ours has a different count`);
  }
  // Each run's output goes before the next, so the disk does not fill with earlier runs.
  for (const d of [`bundle-${i}`, `skopeo-${i}`, `store-${i}`]) rmSync(path.join(work, d), { recursive: true, force: true });
}

// Second create() from a cached image: no pull, no materialization. Uses the default store (where
// the kernel is) and removes the image from it afterwards.
const prep = [];
for (let i = 0; i < 2; i++) {
  const sb = await CustomSandbox.create({ image: ref, registry: { insecure: [host] }, memory: 256 });
  prep.push(sb.timeline.hostPrepMs);
  await sb.stop();
}
await new ImageStore().remove(ref);
registry.kill();
const files = Number(execFileSync("sh", ["-c", 'find "$1" | wc -l', "sh", rootfs]).toString().trim());
rmSync(work, { recursive: true, force: true });

const result = {
  date: new Date().toISOString(),
  machine: machine(),
  image: { layerBytes, files, unpackedBytes: Number(execFileSync("du", ["-sb", rootfs]).toString().split("\t")[0]) },
  runs: RUNS,
  pullUnpackMs: median(ours),
  skopeoUmociMs: median(theirs),
  ratio: median(ours) / median(theirs),
  ext4MaterializeMs: median(disks),
  secondCreateHostPrepMs: prep[1],
  targets: { ratio: "<= 1.0", secondCreateHostPrepMs: "<= 10" },
};
const f = (n) => n.toFixed(0);
const md = `# Pull benchmark

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
Image: Debian bookworm + python3-minimal as one gzip layer (${(result.image.layerBytes / 1e6).toFixed(1)} MB compressed, ${(result.image.unpackedBytes / 1e6).toFixed(0)} MB / ${result.image.files} files unpacked),
served by docker-registry on 127.0.0.1; medians of ${RUNS} runs, alternating, each into an empty store.

| step | ms | note |
| --- | --- | --- |
| **microsandbox pull + unpack** (download, verify, path-safe apply) | **${f(result.pullUnpackMs)}** | |
| **skopeo copy + umoci unpack** (same image, same run) | **${f(result.skopeoUmociMs)}** | |
| ratio | ${result.ratio.toFixed(2)} | target ≤ 1.0 |
| ext4 disk from the unpacked tree (once per image) | ${f(result.ext4MaterializeMs)} | not part of the comparison |
| host prep of a second create() from the cached image | ${result.secondCreateHostPrepMs.toFixed(2)} | target ≤ 10 |
`;
writeFileSync(path.join(here, "results", "pull.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "pull.md"), md);
console.log(md);
