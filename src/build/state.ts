// Where a build stands after a step: the image its VM booted from (the base), the layer of changes
// made over it since, and the image config so far. A state names an image: its OCI config (the
// base's, with these settings, the layer's diff_id and a history entry per step) hashed is the
// image id, so the same state is the same image. The step cache maps (parent state's id, step) to
// the state after it, in <cache>/builds/cache/<key>.json.
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import { applyLayer } from "../images/layers.js";
import { hostPlatform } from "../images/registry.js";
import type { ImageConfig, ImageStore, ResolvedImage } from "../images/store.js";

const run = promisify(execFile);

export interface BuildState {
  /** The image the changes are over: one the store holds, or a local: image. */
  base: { id: string; rootfs: string; raw: Record<string, unknown> };
  /** The changes since the base, as a layer blob in the store (uncompressed tar). */
  layer?: { digest: string; size: number };
  config: ImageConfig;
  /** Set by this build: an ENTRYPOINT then keeps it (one from the base is dropped, as Docker does). */
  cmdSet: boolean;
  /** How each step since the base is described in the image's history. */
  history: string[];
}

type Raw = Record<string, unknown>;
const obj = (v: unknown): Raw => (v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Raw) : {});

/** The OCI config of a base image: its config.json, or a stand-in for a local: image (which has none). */
export async function baseRaw(image: ResolvedImage, store: ImageStore): Promise<Raw> {
  if (image.id.startsWith("local-")) {
    const p = hostPlatform();
    return {
      architecture: p.architecture,
      os: "linux",
      config: {},
      rootfs: { type: "layers", diff_ids: [] },
      history: [{ created_by: `microsandbox local image ${image.id}`, empty_layer: true }],
    };
  }
  return JSON.parse(await readFile(path.join(store.imageDir(image.id), "config.json"), "utf8")) as Raw;
}

/** The state's image config (OCI), as stored in config.json. */
export function stateConfig(s: BuildState): Buffer {
  const raw = s.base.raw;
  const c = s.config;
  const config: Raw = { ...obj(raw.config), Env: c.env };
  for (const [key, v] of [
    ["WorkingDir", c.workingDir],
    ["User", c.user],
    ["Cmd", c.cmd],
    ["Entrypoint", c.entrypoint],
  ] as const) {
    if (v === undefined) delete config[key];
    else config[key] = v;
  }
  const diffIds = Array.isArray(obj(raw.rootfs).diff_ids) ? (obj(raw.rootfs).diff_ids as string[]) : [];
  const history = [
    ...(Array.isArray(raw.history) ? raw.history : []),
    ...s.history.map((h) => ({ created_by: h, empty_layer: true })),
    ...(s.layer ? [{ created_by: "msb build: the files the steps above changed" }] : []),
  ];
  const out = { ...raw, config, rootfs: { type: "layers", diff_ids: [...diffIds, ...(s.layer ? [s.layer.digest] : [])] }, history };
  return Buffer.from(JSON.stringify(out));
}

/** The image id the state names (hex sha256 of its config). */
export const stateId = (s: BuildState): string => createHash("sha256").update(stateConfig(s)).digest("hex");

/** The step cache's key for `step` after the state with id `parentId`. */
export const stepKey = (parentId: string, step: unknown): string =>
  createHash("sha256")
    .update(`${parentId}\n${JSON.stringify(step)}`)
    .digest("hex");

const cacheFile = (store: ImageStore, key: string) => path.join(store.root, "builds", "cache", `${key}.json`);

/** The cached state for `key`, if its image can still be had (the image, or its base and layer). */
export async function cachedState(store: ImageStore, key: string): Promise<BuildState | undefined> {
  let s: BuildState;
  try {
    s = JSON.parse(await readFile(cacheFile(store, key), "utf8")) as BuildState;
  } catch {
    return undefined;
  }
  if (await store.byId(stateId(s))) return s;
  const layerKept = !s.layer || existsSync(path.join(store.blobDir, s.layer.digest.slice("sha256:".length)));
  return existsSync(s.base.rootfs) && layerKept ? s : undefined;
}

export async function cacheState(store: ImageStore, key: string, s: BuildState): Promise<void> {
  const file = cacheFile(store, key);
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
  await writeFile(tmp, JSON.stringify(s));
  await rename(tmp, file);
}

/**
 * The state's image in the store, made if missing: the base's tree (hard links: nothing of it is
 * written to, layers replace files rather than write into them), the layer over it, the config.
 * Named `ref` when given.
 */
export async function materialize(store: ImageStore, s: BuildState, ref?: string): Promise<ResolvedImage> {
  const id = stateId(s);
  const had = await store.byId(id, ref);
  if (had && ref === undefined) return had;
  return store.publish(ref, id, async (dir) => {
    const rootfs = path.join(dir, "rootfs");
    await run("cp", ["-a", "--link", "--", `${s.base.rootfs}/.`, `${rootfs}/`]).catch(async () => {
      // Another filesystem: a real copy, into an empty dir (cp would write into the links made).
      await rm(rootfs, { recursive: true, force: true });
      await run("cp", ["-a", "--", s.base.rootfs, rootfs]);
    });
    if (s.layer) {
      const blob = path.join(store.blobDir, s.layer.digest.slice("sha256:".length));
      await applyLayer(createReadStream(blob), rootfs, { layer: s.layer.digest });
    }
    await writeFile(path.join(dir, "config.json"), stateConfig(s));
  });
}
