// RegistryClient: speaks the OCI distribution API to resolve an image reference to a manifest for
// one platform and to download its blobs, verified by digest while streaming, with token auth and retries.
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, rename, rm } from "node:fs/promises";
import path from "node:path";

import { DigestMismatchError, InvalidArgumentError, RegistryError } from "../errors.js";
import { checkKeys, keysOf } from "../keys.js";
import { type Credentials, credentialsHint, credentialsOption, defaultDockerConfig, normaliseRegistry, RegistryAuth } from "./auth.js";
import { bodyChunks, errorDetail, follow, readCapped, retrying, TransientError } from "./http.js";
import { hostPlatform, type Platform, selectPlatform } from "./platform.js";
import { type ImageReference, isDigest, parseReference, registryHost, withDigest } from "./reference.js";

// The pieces that moved out stay importable from here, as before.
export { type Credentials, parseChallenges } from "./auth.js";
export { formatPlatform, hostPlatform, type Platform, platformMatches } from "./platform.js";

export const MEDIA_TYPES = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
} as const;

const INDEX_TYPES = new Set<string>([MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList]);
const MANIFEST_TYPES = new Set<string>([MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest]);
const ACCEPT = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList, MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest].join(", ");
const MANIFEST_MAX_BYTES = 4 * 1024 * 1024;
const MAX_INDEX_DEPTH = 2;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  urls?: string[];
  platform?: Platform & { "os.version"?: string; "os.features"?: string[] };
}

/** An image manifest (OCI or Docker v2; the shapes agree on what we read). */
export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ResolvedManifest {
  /** The reference pinned to the image manifest's digest. */
  ref: ImageReference;
  /** Digest of the platform's image manifest (not of the index it was picked from). */
  digest: string;
  /** Digest of the index the manifest was picked from, when there was one. */
  indexDigest?: string;
  mediaType: string;
  /** The manifest bytes exactly as served (they hash to `digest`). */
  raw: Buffer;
  manifest: ImageManifest;
  config: Descriptor;
  layers: Descriptor[];
}

export interface RegistryClientOptions {
  /** Per registry name as written in references ("docker.io", "ghcr.io", "127.0.0.1:5000"). `token` is sent as a Bearer token as is. */
  credentials?: Record<string, Credentials>;
  /** Docker's config.json, whose "auths" entries' base64 "auth" give credentials; default $DOCKER_CONFIG/config.json or ~/.docker/config.json. */
  dockerConfig?: string;
  /** Registries ("host:port" or "host") allowed over plain HTTP. Nothing else ever is, localhost included. */
  insecure?: string[];
  /** Further attempts after a network error, a 5xx or a cut-off body; default 3. */
  retries?: number;
  /** First backoff delay in ms, doubled per attempt; default 250. */
  retryDelay?: number;
  fetch?: typeof fetch;
}

const REGISTRY_KEYS = keysOf<RegistryClientOptions>({ credentials: true, dockerConfig: true, insecure: true, retries: true, retryDelay: true, fetch: true });

/** Progress of RegistryClient.pull(); a callback receives them in order (wrap it in a queue for an async iterable). */
export type PullEvent =
  | { type: "resolved"; ref: string; digest: string; layers: Descriptor[] }
  | { type: "layer-start" | "layer-progress" | "layer-done"; digest: string; bytes: number; total: number }
  | { type: "layer-cached"; digest: string; bytes: number; total: number }
  | { type: "done"; ref: string; digest: string };

export interface PullOptions {
  platform?: Platform;
  onEvent?: (event: PullEvent) => void;
  /** Blobs downloaded at once; default 3. */
  concurrency?: number;
}

export class RegistryClient {
  readonly #auth: RegistryAuth;
  readonly #insecure: Set<string>;
  readonly #retries: number;
  readonly #retryDelay: number;
  readonly #fetch: typeof fetch;

  constructor(options: RegistryClientOptions = {}) {
    checkKeys("registry option", options, REGISTRY_KEYS);
    const credentials = credentialsOption(options.credentials);
    const retries = options.retries ?? 3;
    if (!Number.isInteger(retries) || retries < 0 || retries > 20) {
      throw new InvalidArgumentError(`retries must be an integer from 0 to 20, got ${String(options.retries)}`);
    }
    const retryDelay = options.retryDelay ?? 250;
    if (!Number.isFinite(retryDelay) || retryDelay < 0) {
      throw new InvalidArgumentError(`retryDelay must be a non-negative number of ms, got ${String(options.retryDelay)}`);
    }
    if (options.insecure !== undefined && !(Array.isArray(options.insecure) && options.insecure.every((s) => typeof s === "string"))) {
      throw new InvalidArgumentError(`insecure must be an array of registry names such as "127.0.0.1:5000"`);
    }
    this.#retries = retries;
    this.#retryDelay = retryDelay;
    this.#insecure = new Set((options.insecure ?? []).map(normaliseRegistry));
    this.#fetch = options.fetch ?? globalThis.fetch;
    // Token requests go through #follow too: the same redirect rules, and the same fetch.
    this.#auth = new RegistryAuth(credentials, options.dockerConfig ?? defaultDockerConfig(), {
      follow: (url, headers) => this.#follow(url, headers),
      isInsecure: (registry) => this.#isInsecure(registry),
    });
  }

  /**
   * Resolves `reference` to the image manifest for `platform` (default: this host's), following an
   * index or manifest list. Manifests named by digest (in the reference or the index) are verified.
   */
  async getManifest(reference: string | ImageReference, platform: Platform = hostPlatform()): Promise<ResolvedManifest> {
    const ref = typeof reference === "string" ? parseReference(reference) : reference;
    if (!platform || typeof platform.os !== "string" || typeof platform.architecture !== "string") {
      throw new InvalidArgumentError(`platform must be { os, architecture, variant? }, got ${JSON.stringify(platform)}`);
    }
    let fetched = await this.#fetchManifest(ref, ref.digest ?? ref.tag ?? "latest", ref.digest);
    let indexDigest: string | undefined;
    for (let depth = 0; INDEX_TYPES.has(fetched.mediaType); depth++) {
      if (depth >= MAX_INDEX_DEPTH) {
        throw new RegistryError(`${ref}: indexes nest deeper than ${MAX_INDEX_DEPTH} levels; this image is not supported`);
      }
      indexDigest ??= fetched.digest;
      const entries = (fetched.json as { manifests?: unknown }).manifests;
      if (!Array.isArray(entries)) throw new RegistryError(`${ref}: the index ${fetched.digest} has no "manifests" array`);
      const chosen = selectPlatform(entries as Descriptor[], platform, ref);
      checkDescriptor(chosen, `${ref}: index entry`);
      fetched = await this.#fetchManifest(ref, chosen.digest, chosen.digest, chosen.size);
    }
    if (!MANIFEST_TYPES.has(fetched.mediaType)) {
      const hint =
        fetched.mediaType.includes("v1+") || fetched.mediaType.includes("prettyjws")
          ? "Docker schema 1 manifests are not supported: push the image again with a current client"
          : `expected one of ${[...MANIFEST_TYPES, ...INDEX_TYPES].join(", ")}`;
      throw new RegistryError(`${ref}: manifest ${fetched.digest} has media type ${JSON.stringify(fetched.mediaType)}; ${hint}`);
    }
    const manifest = fetched.json as unknown as ImageManifest;
    if (!manifest.config || !Array.isArray(manifest.layers)) {
      throw new RegistryError(`${ref}: manifest ${fetched.digest} lacks "config" or "layers"`);
    }
    checkDescriptor(manifest.config, `${ref}: config`);
    manifest.layers.forEach((l, i) => {
      checkDescriptor(l, `${ref}: layer ${i}`);
    });
    const result: ResolvedManifest = {
      ref: withDigest(ref, fetched.digest),
      digest: fetched.digest,
      mediaType: fetched.mediaType,
      raw: fetched.raw,
      manifest,
      config: manifest.config,
      layers: manifest.layers,
    };
    if (indexDigest !== undefined) result.indexDigest = indexDigest;
    return result;
  }

  /**
   * Downloads a blob to `destPath` through a temp file beside it, checking size and digest as it
   * streams; renames into place only when both match. Network errors, 5xx and cut-off bodies are
   * retried from the start. `onBytes` reports bytes received in the current attempt.
   */
  async fetchBlob(
    reference: string | ImageReference,
    descriptor: Pick<Descriptor, "digest" | "size">,
    destPath: string,
    onBytes?: (bytes: number, total: number) => void,
  ): Promise<void> {
    const ref = typeof reference === "string" ? parseReference(reference) : reference;
    checkDescriptor(descriptor, `blob for ${ref}`);
    const { digest, size } = descriptor;
    const dir = path.dirname(destPath);
    await mkdir(dir, { recursive: true });
    const where = `${ref.registry}/${ref.repository}@${digest}`;
    await this.#retrying(
      `download of blob ${where}`,
      async () => {
        const tmp = path.join(dir, `.${path.basename(destPath)}.${randomBytes(6).toString("hex")}.partial`);
        try {
          const res = await this.#get(ref, `/v2/${ref.repository}/blobs/${digest}`);
          if (!res.ok) throw await this.#statusError(res, ref, `blob ${where}`);
          const length = res.headers.get("content-length");
          if (length !== null && Number(length) !== size) {
            await res.body?.cancel();
            throw new DigestMismatchError(
              `${where}: the registry sent Content-Length ${length} but the manifest says ${size} bytes; the blob is not the one the manifest names`,
            );
          }
          const hash = createHash(digest.slice(0, digest.indexOf(":")));
          let received = 0;
          const fh = await open(tmp, "wx");
          try {
            for await (const chunk of bodyChunks(res, "the blob")) {
              received += chunk.length;
              if (received > size) {
                throw new DigestMismatchError(`${where}: received more than the ${size} bytes the manifest says; the blob is not the one the manifest names`);
              }
              hash.update(chunk);
              for (let off = 0; off < chunk.length; ) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
              onBytes?.(received, size);
            }
            if (received < size) throw new TransientError(`the body ended after ${received} of ${size} bytes`);
            const actual = `${digest.slice(0, digest.indexOf(":"))}:${hash.digest("hex")}`;
            if (actual !== digest) {
              throw new DigestMismatchError(
                `${where}: the downloaded content hashes to ${actual}; the registry served corrupt or tampered data. ` +
                  `Nothing was kept at ${destPath}; report it to the registry's operator`,
              );
            }
            // No fsync: the blob is a download cache whose image is unpacked right away (and the
            // unpacked tree is not synced either); flushing 100 MB here cost seconds on slow disks.
          } finally {
            await fh.close();
          }
          await rename(tmp, destPath);
        } catch (err) {
          await rm(tmp, { force: true });
          throw err;
        }
      },
      ref,
    );
  }

  /**
   * Resolves `reference` and downloads its config and layers into `<dir>/blobs/<alg>/<hex>`,
   * skipping blobs already there (they were verified before being renamed into place).
   */
  async pull(reference: string | ImageReference, dir: string, options: PullOptions = {}): Promise<ResolvedManifest> {
    const ref = typeof reference === "string" ? parseReference(reference) : reference;
    const emit = options.onEvent ?? (() => {});
    const resolved = await this.getManifest(ref, options.platform);
    emit({ type: "resolved", ref: String(ref), digest: resolved.digest, layers: resolved.layers });
    const blobs = [resolved.config, ...resolved.layers];
    const concurrency = Math.max(1, options.concurrency ?? 3);
    let next = 0;
    const worker = async () => {
      while (next < blobs.length) {
        const blob = blobs[next++]!;
        const [alg, hex] = blob.digest.split(":") as [string, string];
        const dest = path.join(dir, "blobs", alg, hex);
        if (await exists(dest)) {
          emit({ type: "layer-cached", digest: blob.digest, bytes: blob.size, total: blob.size });
          continue;
        }
        emit({ type: "layer-start", digest: blob.digest, bytes: 0, total: blob.size });
        await this.fetchBlob(ref, blob, dest, (bytes, total) => emit({ type: "layer-progress", digest: blob.digest, bytes, total }));
        emit({ type: "layer-done", digest: blob.digest, bytes: blob.size, total: blob.size });
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, blobs.length) }, worker));
    emit({ type: "done", ref: String(resolved.ref), digest: resolved.digest });
    return resolved;
  }

  async #fetchManifest(ref: ImageReference, reference: string, pinned: string | undefined, expectedSize?: number) {
    const name = `${ref.registry}/${ref.repository}${isDigest(reference) ? "@" : ":"}${reference}`;
    return this.#retrying(
      `fetch of manifest ${name}`,
      async () => {
        const res = await this.#get(ref, `/v2/${ref.repository}/manifests/${reference}`, ACCEPT);
        if (!res.ok) throw await this.#statusError(res, ref, `manifest ${name}`);
        const cap = Math.min(MANIFEST_MAX_BYTES, expectedSize ?? MANIFEST_MAX_BYTES);
        const raw = await readCapped(res, cap, `manifest ${name}`);
        const alg = pinned ? pinned.slice(0, pinned.indexOf(":")) : "sha256";
        const digest = `${alg}:${createHash(alg).update(raw).digest("hex")}`;
        if (pinned !== undefined && digest !== pinned) {
          throw new DigestMismatchError(
            `${ref.registry}/${ref.repository}: the manifest served for ${pinned} hashes to ${digest}; the registry served corrupt or tampered data`,
          );
        }
        if (expectedSize !== undefined && raw.length !== expectedSize) {
          throw new DigestMismatchError(`${ref.registry}/${ref.repository}@${digest}: the manifest is ${raw.length} bytes but the index says ${expectedSize}`);
        }
        let json: Record<string, unknown>;
        try {
          json = JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
          if (json === null || typeof json !== "object") throw new Error("not an object");
        } catch (err) {
          throw new RegistryError(`manifest ${name} is not a JSON object`, res.status, { cause: err });
        }
        const mediaType =
          (typeof json.mediaType === "string" && json.mediaType) ||
          res.headers.get("content-type")?.split(";")[0]?.trim() ||
          (Array.isArray(json.manifests) ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest);
        return { digest, mediaType, raw, json };
      },
      ref,
    );
  }

  /** A GET with authentication: cached credentials up front, one challenge-response on 401. */
  async #get(ref: ImageReference, pathname: string, accept?: string): Promise<Response> {
    const url = `${this.#scheme(ref.registry)}://${registryHost(ref.registry)}${pathname}`;
    const headers: Record<string, string> = accept ? { accept } : {};
    const cached = this.#auth.cachedAuthorization(ref);
    if (cached) headers.authorization = cached;
    let res = await this.#follow(url, headers);
    if (res.status !== 401) return res;
    const challenge = res.headers.get("www-authenticate");
    await res.body?.cancel();
    const authorization = challenge ? await this.#auth.authorize(ref, challenge) : undefined;
    if (authorization === undefined || authorization === cached) return res;
    res = await this.#follow(url, { ...headers, authorization });
    return res;
  }

  /** fetch() with redirects followed by hand: never https→http, and no Authorization to another origin. */
  #follow(url: string, headers: Record<string, string>): Promise<Response> {
    return follow((input, init) => this.#fetch(input, init), url, headers);
  }

  /** Runs `attempt` until it succeeds, fails for good, or `retries` more attempts have failed. */
  #retrying<T>(what: string, attempt: () => Promise<T>, ref: ImageReference): Promise<T> {
    const insecure = this.#isInsecure(ref.registry);
    return retrying(what, attempt, { retries: this.#retries, retryDelay: this.#retryDelay, registry: ref.registry, insecure });
  }

  async #statusError(res: Response, ref: ImageReference, what: string): Promise<Error> {
    const detail = await errorDetail(res);
    if (res.status >= 500 || res.status === 429) return new TransientError(`${res.status} from ${ref.registry}${detail}`, res.status);
    if (res.status === 401 || res.status === 403) {
      const creds = this.#auth.credentialsFor(ref.registry);
      return new RegistryError(
        creds
          ? `${res.status} from ${ref.registry} for ${what}${detail}: the credentials for ${ref.registry} do not give pull access to ${ref.repository}`
          : `${res.status} from ${ref.registry} for ${what}${detail}: ${credentialsHint(ref.registry)}`,
        res.status,
      );
    }
    if (res.status === 404) {
      return new RegistryError(`${what} not found on ${ref.registry}${detail}; check the repository name, tag and digest`, 404);
    }
    return new RegistryError(`${res.status} from ${ref.registry} for ${what}${detail}`, res.status);
  }

  #scheme(registry: string): "http" | "https" {
    return this.#isInsecure(registry) ? "http" : "https";
  }

  #isInsecure(registry: string): boolean {
    return this.#insecure.has(registry) || this.#insecure.has(registry.replace(/:\d+$/, ""));
  }
}

function checkDescriptor(d: Partial<Descriptor> | undefined, what: string): asserts d is Descriptor {
  if (!d || !isDigest(d.digest)) {
    throw new RegistryError(`${what}: digest ${JSON.stringify(d?.digest)} is not sha256:<64 hex> or sha512:<128 hex>`);
  }
  if (!Number.isSafeInteger(d.size) || (d.size as number) < 0) {
    throw new RegistryError(`${what}: size ${JSON.stringify(d.size)} of ${d.digest} is not a non-negative integer`);
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await (await open(file, "r")).close();
    return true;
  } catch {
    return false;
  }
}

export { PlatformNotFoundError, RegistryError } from "../errors.js";
