// Where images come from: a registry (pulled, verified, unpacked once), an OCI image layout
// (directory or tar), a `docker save` archive, or an image built locally by
// scripts/build-image.sh. Every source ends in ImageStore.publish: one unpacked image per content.
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { lstat, mkdir, mkdtemp, readFile, realpath, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";

import { ImageError, InvalidArgumentError } from "../errors.js";
import { applyLayer } from "./layers.js";
import { parseReference } from "./reference.js";
import { type Descriptor, hostPlatform, type Platform, type PullEvent, platformMatches, RegistryClient, type RegistryClientOptions } from "./registry.js";
import type { ImageStore, ResolvedImage } from "./store.js";
import { type LayerSource, unpackLayers } from "./unpack.js";

export interface ResolveOptions {
  /** When to contact the registry: "missing" (default), "always", "never". */
  pull?: "missing" | "always" | "never";
  registry?: RegistryClientOptions;
  platform?: Platform;
  onEvent?: (event: PullEvent) => void;
}

const ARCHIVE = /^(oci|oci-archive|docker-archive):(.+)$/;
const MAX_JSON = 4 * 1024 * 1024;

/** Finds or fetches the image `ref` names and returns it unpacked. */
export async function resolveImage(store: ImageStore, ref: string, opts: ResolveOptions = {}): Promise<ResolvedImage> {
  if (typeof ref !== "string" || ref === "")
    throw new InvalidArgumentError(`image ${JSON.stringify(ref)} is invalid: name an image such as "python:3.12-slim"`);
  if (ref.startsWith("local:")) return (await store.lookup(ref))!;
  const archive = ARCHIVE.exec(ref);
  if (archive) return importArchive(store, ref, archive[1] as "oci" | "oci-archive" | "docker-archive", archive[2]!, opts.platform);
  const canonical = String(parseReference(ref));
  if (opts.pull !== "always") {
    const cached = await store.lookup(canonical);
    if (cached) return cached;
  }
  if (opts.pull === "never") {
    throw new ImageError(`image ${canonical} is not in ${store.root} and pulling is off: pull it first (msb pull ${ref}) or allow pull: "missing"`);
  }
  return pullImage(store, canonical, opts);
}

/** Pulls `ref` from its registry into the store (blobs are verified by digest as they stream). */
export async function pullImage(store: ImageStore, ref: string, opts: ResolveOptions = {}): Promise<ResolvedImage> {
  const client = new RegistryClient(opts.registry);
  const resolved = await client.pull(ref, store.root, {
    ...(opts.platform ? { platform: opts.platform } : {}),
    ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
  });
  const blob = (d: Descriptor) => path.join(store.blobDir, d.digest.slice("sha256:".length));
  const config = await readJson(blob(resolved.config), `config of ${ref}`);
  const layers = resolved.layers.map((d) => ({ digest: d.digest, path: blob(d) }));
  return store.publish(ref, resolved.config.digest.slice("sha256:".length), (dir) => unpackInto(dir, config.bytes, layers));
}

/**
 * Pulls like pullImage, with progress as an async iterable of typed events; `image` settles when
 * the image is in the store. Iterating is optional: events are buffered until read.
 */
export function pullEvents(
  store: ImageStore,
  ref: string,
  opts: Omit<ResolveOptions, "onEvent"> = {},
): { events: AsyncIterable<PullEvent>; image: Promise<ResolvedImage> } {
  const queue: PullEvent[] = [];
  let wake: (() => void) | undefined;
  let finished = false;
  const image = pullImage(store, String(parseReference(ref)), { ...opts, onEvent: (e) => (queue.push(e), wake?.()) }).finally(() => {
    finished = true;
    wake?.();
  });
  image.catch(() => {}); // surfaced through `image` and at the end of `events`
  const events = async function* () {
    for (;;) {
      while (queue.length) yield queue.shift()!;
      if (finished) {
        await image; // rethrows the pull's error to the iterating caller
        return;
      }
      await new Promise<void>((r) => (wake = r));
    }
  };
  return { events: events(), image };
}

async function unpackInto(dir: string, config: Buffer, layers: LayerSource[]): Promise<void> {
  await unpackLayers(layers, path.join(dir, "rootfs"));
  await writeFile(path.join(dir, "config.json"), config);
}

// A file of an image archive or layout: a regular file really inside `root` (archives can hold
// symlinks to /dev/zero, to FIFOs or to host files).
async function member(root: string, rel: string, what: string): Promise<string> {
  const file = path.resolve(root, rel);
  const real = await realpath(file).catch(() => undefined);
  if (!real) throw new ImageError(`${what} is missing (${file})`);
  if (!real.startsWith((await realpath(root)) + path.sep)) throw new ImageError(`${what} (${rel}) leads outside ${root}`);
  if (!(await lstat(real)).isFile()) throw new ImageError(`${what} (${rel}) is not a regular file`);
  return real;
}

async function readJson(file: string, what: string): Promise<{ bytes: Buffer; value: Record<string, unknown> }> {
  const size = (await stat(file).catch(() => undefined))?.size;
  if (size === undefined) throw new ImageError(`${what} is missing (${file})`);
  if (size > MAX_JSON) throw new ImageError(`${what} is ${size} bytes; more than ${MAX_JSON} is not an image's JSON`);
  const bytes = await readFile(file);
  try {
    return { bytes, value: JSON.parse(bytes.toString("utf8")) as Record<string, unknown> };
  } catch (err) {
    throw new ImageError(`${what} is not JSON (${file})`, { cause: err });
  }
}

async function fileDigest(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest("hex")}`;
}

// A blob of an OCI layout, checked against its digest: archives are untrusted like registries.
async function layoutBlob(layout: string, d: unknown, what: string): Promise<string> {
  const digest = (d as Descriptor | undefined)?.digest;
  if (typeof digest !== "string" || !/^sha256:[a-f0-9]{64}$/.test(digest)) throw new ImageError(`${what}: bad or missing digest ${JSON.stringify(digest)}`);
  const file = await member(layout, path.join("blobs", "sha256", digest.slice(7)), `${what}: blob ${digest}`);
  const actual = await fileDigest(file);
  if (actual !== digest) throw new ImageError(`${what}: blob ${digest} hashes to ${actual}; the archive is corrupt or tampered`);
  return file;
}

async function fromLayout(
  store: ImageStore,
  ref: string,
  layout: string,
  tag: string | undefined,
  platform: Platform,
  identity: string,
): Promise<ResolvedImage> {
  const index = await readJson(await member(layout, "index.json", `index.json of ${ref}`), `index.json of ${ref}`);
  const manifests = Array.isArray(index.value.manifests) ? (index.value.manifests as Descriptor[]) : [];
  const name = (d: Descriptor) => d.annotations?.["org.opencontainers.image.ref.name"];
  const chosen = tag ? manifests.filter((d) => name(d) === tag || name(d)?.endsWith(`:${tag}`)) : manifests;
  if (chosen.length !== 1) {
    const names = manifests.map(name).filter(Boolean).join(", ") || "none";
    throw new ImageError(
      `${ref}: ${chosen.length ? "several images" : "no image"} ${tag ? `tagged ${tag}` : ""} in ${layout}; name one as oci:DIR:TAG (tags: ${names})`,
    );
  }
  let manifest = (await readJson(await layoutBlob(layout, chosen[0], ref), `manifest of ${ref}`)).value;
  if (Array.isArray(manifest.manifests)) {
    const match = (manifest.manifests as Descriptor[]).find((d) => platformMatches(platform, d.platform));
    if (!match) throw new ImageError(`${ref}: no image for ${platform.os}/${platform.architecture} in its index`);
    manifest = (await readJson(await layoutBlob(layout, match, ref), `manifest of ${ref}`)).value;
  }
  const configFile = await layoutBlob(layout, manifest.config, `config of ${ref}`);
  const config = await readJson(configFile, `config of ${ref}`);
  const layers: LayerSource[] = [];
  for (const d of (manifest.layers as Descriptor[] | undefined) ?? []) {
    layers.push({ digest: d.digest, path: await layoutBlob(layout, d, `layer of ${ref}`) });
  }
  const id = path.basename(configFile);
  return store.publish(ref, id, (dir) => unpackInto(dir, config.bytes, layers), identity);
}

// `docker save` before Docker 25: manifest.json names the config and the layer tars.
async function fromDockerSave(store: ImageStore, ref: string, dir: string, identity: string): Promise<ResolvedImage> {
  const manifest = (await readJson(await member(dir, "manifest.json", `manifest.json of ${ref}`), `manifest.json of ${ref}`)).value as unknown;
  const entry = Array.isArray(manifest) && manifest.length === 1 ? (manifest[0] as { Config?: unknown; Layers?: unknown }) : undefined;
  if (!entry || typeof entry.Config !== "string" || !Array.isArray(entry.Layers)) {
    throw new ImageError(`${ref}: manifest.json must describe exactly one image (save one image per archive)`);
  }
  const inside = (p: unknown, what: string) => {
    if (typeof p !== "string") throw new ImageError(`${ref}: manifest.json names ${JSON.stringify(p)} as a file`);
    return member(dir, p, `${what} of ${ref}`);
  };
  const config = await readJson(await inside(entry.Config, "config"), `config of ${ref}`);
  const layers: LayerSource[] = [];
  for (const l of entry.Layers) {
    const file = await inside(l, "layer");
    layers.push({ digest: await fileDigest(file), path: file });
  }
  const id = createHash("sha256").update(config.bytes).digest("hex");
  return store.publish(ref, id, (d) => unpackInto(d, config.bytes, layers), identity);
}

async function importArchive(
  store: ImageStore,
  ref: string,
  kind: "oci" | "oci-archive" | "docker-archive",
  spec: string,
  platform = hostPlatform(),
): Promise<ResolvedImage> {
  // "PATH:TAG" when what follows the last ':' is not part of a path.
  const colon = spec.lastIndexOf(":");
  const [file, tag] = colon > 0 && !spec.slice(colon + 1).includes("/") ? [spec.slice(0, colon), spec.slice(colon + 1)] : [spec, undefined];
  if (!existsSync(file)) throw new ImageError(`${ref}: ${file} does not exist`);
  // The same path can hold another image later: the cache entry is valid for this file as it is now.
  const st = await stat(kind === "oci" ? path.join(file, "index.json") : file);
  const identity = `${await realpath(file)} ${st.size} ${st.mtimeMs}`;
  const cached = await store.lookup(ref, identity);
  if (cached) return cached;
  if (kind === "oci") return fromLayout(store, ref, file, tag, platform, identity);
  // Archives are unpacked with the same path-safe code as image layers: they are untrusted too.
  await mkdir(store.root, { recursive: true });
  const tmp = await mkdtemp(path.join(store.root, ".import-"));
  try {
    await applyLayer(createReadStream(file), tmp, { layer: file });
    if (existsSync(path.join(tmp, "index.json"))) return await fromLayout(store, ref, tmp, tag, platform, identity);
    if (kind === "docker-archive") return await fromDockerSave(store, ref, tmp, identity);
    throw new ImageError(`${ref}: ${file} holds no index.json: not an OCI image layout archive`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
