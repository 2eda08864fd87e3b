// RegistryClient: speaks the OCI distribution API to resolve an image reference to a manifest for
// one platform and to download its blobs, verified by digest while streaming, with token auth and retries.
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, open, rename, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { debuglog } from "node:util";

import { InvalidArgumentError, MicrosandboxError } from "../errors.js";
import { type ImageReference, isDigest, parseReference, registryHost, withDigest } from "./reference.js";

const debug = debuglog("microsandbox");

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
const TOKEN_MAX_BYTES = 1024 * 1024;
const MAX_REDIRECTS = 10;
const MAX_INDEX_DEPTH = 2;

/** The registry refused or failed a request; `status` is the HTTP status when there was one. */
export class RegistryError extends MicrosandboxError {
  override readonly code: string = "MSB_REGISTRY";
  constructor(
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Downloaded content did not match the digest or size that named it; nothing was kept. */
export class DigestMismatchError extends MicrosandboxError {
  override readonly code = "MSB_DIGEST_MISMATCH";
}

/** An image index has no manifest for the wanted platform; `available` lists the ones it has. */
export class PlatformNotFoundError extends MicrosandboxError {
  override readonly code = "MSB_PLATFORM_NOT_FOUND";
  constructor(
    message: string,
    readonly available: string[],
  ) {
    super(message);
  }
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

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

export type Credentials = { username: string; password: string } | { token: string };

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

/** Marks a failure worth another attempt: network errors, 5xx/429, truncated bodies. */
class TransientError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const GOARCH: Partial<Record<NodeJS.Architecture, string>> = {
  x64: "amd64", arm64: "arm64", arm: "arm", ia32: "386", ppc64: "ppc64le", s390x: "s390x", riscv64: "riscv64",
};

/** The platform this process runs on, in OCI terms: linux/amd64 or linux/arm64. */
export function hostPlatform(): Platform {
  return { os: "linux", architecture: GOARCH[process.arch] ?? process.arch };
}

export function formatPlatform(p: Platform | undefined): string {
  if (!p) return "unknown";
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

/** Whether an index entry's platform serves `want`; arm64 treats variant "v8" and none as the same. */
export function platformMatches(want: Platform, have: Platform | undefined): boolean {
  if (!have || have.os !== want.os || have.architecture !== want.architecture) return false;
  const norm = (v: string | undefined) => (want.architecture === "arm64" && v === "v8" ? undefined : v || undefined);
  if (want.variant === undefined) return want.architecture === "arm64" ? norm(have.variant) === undefined : true;
  return norm(have.variant) === norm(want.variant);
}

export class RegistryClient {
  readonly #credentials = new Map<string, Credentials>();
  readonly #dockerConfig: string;
  #dockerAuths: Map<string, Credentials> | undefined;
  readonly #insecure: Set<string>;
  readonly #retries: number;
  readonly #retryDelay: number;
  readonly #fetch: typeof fetch;
  /** Authorization header values by "registry scope", with their expiry (ms since epoch). */
  readonly #tokens = new Map<string, { header: string; expires: number }>();
  /** Registries that asked for Basic auth: later requests send it up front. */
  readonly #basic = new Set<string>();

  constructor(options: RegistryClientOptions = {}) {
    for (const [registry, creds] of Object.entries(options.credentials ?? {})) {
      const ok =
        creds !== null && typeof creds === "object" &&
        ("token" in creds ? typeof creds.token === "string" && creds.token !== "" :
          typeof creds.username === "string" && typeof creds.password === "string");
      if (!ok) {
        throw new InvalidArgumentError(`credentials for ${JSON.stringify(registry)} must be { username, password } or { token } with strings`);
      }
      this.#credentials.set(normaliseRegistry(registry), creds);
    }
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
    this.#dockerConfig =
      options.dockerConfig ??
      path.join(process.env.DOCKER_CONFIG || path.join(os.homedir(), ".docker"), "config.json");
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
      const chosen = (entries as Descriptor[]).find((d) => platformMatches(platform, d?.platform));
      if (!chosen) {
        const available = (entries as Descriptor[])
          .map((d) => formatPlatform(d?.platform))
          .filter((p) => p !== "unknown/unknown");
        throw new PlatformNotFoundError(
          `${ref} has no image for ${formatPlatform(platform)}; it has ${available.join(", ") || "none"}. ` +
            `Pick one with getManifest(ref, { os, architecture, variant }) or use an image built for this platform`,
          available,
        );
      }
      checkDescriptor(chosen, `${ref}: index entry`);
      fetched = await this.#fetchManifest(ref, chosen.digest, chosen.digest, chosen.size);
    }
    if (!MANIFEST_TYPES.has(fetched.mediaType)) {
      const hint = fetched.mediaType.includes("v1+") || fetched.mediaType.includes("prettyjws")
        ? "Docker schema 1 manifests are not supported: push the image again with a current client"
        : `expected one of ${[...MANIFEST_TYPES, ...INDEX_TYPES].join(", ")}`;
      throw new RegistryError(`${ref}: manifest ${fetched.digest} has media type ${JSON.stringify(fetched.mediaType)}; ${hint}`);
    }
    const manifest = fetched.json as unknown as ImageManifest;
    if (!manifest.config || !Array.isArray(manifest.layers)) {
      throw new RegistryError(`${ref}: manifest ${fetched.digest} lacks "config" or "layers"`);
    }
    checkDescriptor(manifest.config, `${ref}: config`);
    manifest.layers.forEach((l, i) => checkDescriptor(l, `${ref}: layer ${i}`));
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
    await this.#retrying(`download of blob ${where}`, async () => {
      const tmp = path.join(dir, `.${path.basename(destPath)}.${randomBytes(6).toString("hex")}.partial`);
      try {
        const res = await this.#get(ref, `/v2/${ref.repository}/blobs/${digest}`);
        if (!res.ok) throw await this.#statusError(res, ref, `blob ${where}`);
        const length = res.headers.get("content-length");
        if (length !== null && Number(length) !== size) {
          await res.body?.cancel();
          throw new DigestMismatchError(`${where}: the registry sent Content-Length ${length} but the manifest says ${size} bytes; the blob is not the one the manifest names`);
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
          await fh.sync();
        } finally {
          await fh.close();
        }
        await rename(tmp, destPath);
      } catch (err) {
        await rm(tmp, { force: true });
        throw err;
      }
    }, ref);
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
        await this.fetchBlob(ref, blob, dest, (bytes, total) =>
          emit({ type: "layer-progress", digest: blob.digest, bytes, total }),
        );
        emit({ type: "layer-done", digest: blob.digest, bytes: blob.size, total: blob.size });
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, blobs.length) }, worker));
    emit({ type: "done", ref: String(resolved.ref), digest: resolved.digest });
    return resolved;
  }

  async #fetchManifest(ref: ImageReference, reference: string, pinned: string | undefined, expectedSize?: number) {
    const name = `${ref.registry}/${ref.repository}${isDigest(reference) ? "@" : ":"}${reference}`;
    return this.#retrying(`fetch of manifest ${name}`, async () => {
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
    }, ref);
  }

  /** A GET with authentication: cached credentials up front, one challenge-response on 401. */
  async #get(ref: ImageReference, pathname: string, accept?: string): Promise<Response> {
    const url = `${this.#scheme(ref.registry)}://${registryHost(ref.registry)}${pathname}`;
    const headers: Record<string, string> = accept ? { accept } : {};
    const cached = this.#cachedAuthorization(ref);
    if (cached) headers.authorization = cached;
    let res = await this.#follow(url, headers);
    if (res.status !== 401) return res;
    const challenge = res.headers.get("www-authenticate");
    await res.body?.cancel();
    const authorization = challenge ? await this.#authorize(ref, challenge) : undefined;
    if (authorization === undefined || authorization === cached) return res;
    res = await this.#follow(url, { ...headers, authorization });
    return res;
  }

  /** fetch() with redirects followed by hand: never https→http, and no Authorization to another origin. */
  async #follow(url: string, headers: Record<string, string>): Promise<Response> {
    let current = new URL(url);
    const origin = current.origin;
    for (let hop = 0; ; hop++) {
      const sendHeaders = current.origin === origin ? headers : withoutAuthorization(headers);
      const res = await this.#fetch(current, { headers: sendHeaders, redirect: "manual" });
      if (res.status < 300 || res.status >= 400 || res.status === 304 || !res.headers.get("location")) return res;
      await res.body?.cancel();
      if (hop >= MAX_REDIRECTS) throw new RegistryError(`${url}: more than ${MAX_REDIRECTS} redirects`, res.status);
      const next = new URL(res.headers.get("location")!, current);
      if (next.protocol !== "https:" && !(next.protocol === "http:" && current.protocol === "http:")) {
        throw new RegistryError(
          `${current.host} redirected ${current.href} to ${next.href}; refusing to leave HTTPS (or to follow a non-HTTP redirect)`,
          res.status,
        );
      }
      debug("registry: %s redirected to %s", current.href, next.href);
      current = next;
    }
  }

  #cachedAuthorization(ref: ImageReference): string | undefined {
    const creds = this.#credentialsFor(ref.registry);
    if (creds && "token" in creds) return `Bearer ${creds.token}`;
    const token = this.#tokens.get(`${ref.registry} repository:${ref.repository}:pull`);
    if (token && token.expires > Date.now()) return token.header;
    if (creds && this.#basic.has(ref.registry)) return basicHeader(creds);
    return undefined;
  }

  /** Answers a WWW-Authenticate challenge: a Bearer token from the realm, or Basic credentials. */
  async #authorize(ref: ImageReference, header: string): Promise<string | undefined> {
    const challenges = parseChallenges(header);
    const creds = this.#credentialsFor(ref.registry);
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      if (creds && "token" in creds) return undefined; // the token we were given was refused
      return this.#bearerToken(ref, bearer.params, creds);
    }
    if (challenges.some((c) => c.scheme === "basic") && creds) {
      this.#basic.add(ref.registry);
      return basicHeader(creds);
    }
    return undefined;
  }

  async #bearerToken(ref: ImageReference, params: Record<string, string>, creds: Credentials | undefined): Promise<string> {
    const realmText = params.realm;
    let realm: URL;
    try {
      realm = new URL(realmText ?? "");
    } catch {
      throw new RegistryError(`${ref.registry} asked for a Bearer token but gave no valid realm (${JSON.stringify(realmText)})`, 401);
    }
    if (realm.protocol !== "https:" && !(realm.protocol === "http:" && (this.#isInsecure(ref.registry) || this.#isInsecure(realm.host)))) {
      throw new RegistryError(
        `${ref.registry} sends clients to the token server ${realm.href} over ${realm.protocol}; refusing. ` +
          `If that is intended, list ${realm.host} in the insecure option`,
        401,
      );
    }
    const scope = params.scope ?? "";
    const key = `${ref.registry} ${scope}`;
    const url = new URL(realm);
    if (params.service) url.searchParams.set("service", params.service);
    for (const s of scope.split(" ").filter(Boolean)) url.searchParams.append("scope", s);
    const headers: Record<string, string> = { accept: "application/json" };
    if (creds && "username" in creds) headers.authorization = basicHeader(creds);
    const res = await this.#follow(url.href, headers);
    if (!res.ok) {
      const detail = await errorDetail(res);
      if (res.status >= 500 || res.status === 429) throw new TransientError(`token server ${realm.host} answered ${res.status}${detail}`, res.status);
      if (res.status === 401 || res.status === 403) {
        throw new RegistryError(
          creds
            ? `${res.status} from the token server ${realm.host} for ${ref.registry}/${ref.repository}${detail}: ` +
                `it rejected the credentials for ${ref.registry} (user ${JSON.stringify((creds as { username: string }).username)}); check the username and password`
            : `${res.status} from the token server ${realm.host} for ${ref.registry}/${ref.repository}${detail}: ` +
                `anonymous access is refused; ${credentialsHint(ref.registry)}`,
          401,
        );
      }
      throw new RegistryError(`token server ${realm.host} answered ${res.status} for ${ref.registry}/${ref.repository}${detail}`, res.status);
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse((await readCapped(res, TOKEN_MAX_BYTES, `token from ${realm.host}`)).toString("utf8"));
    } catch (err) {
      if (err instanceof MicrosandboxError || err instanceof TransientError) throw err;
      throw new RegistryError(`the token server ${realm.host} did not answer JSON`, res.status, { cause: err });
    }
    const token = typeof body.token === "string" && body.token ? body.token : body.access_token;
    if (typeof token !== "string" || token === "") {
      throw new RegistryError(`the token server ${realm.host} answered without "token" or "access_token"`, res.status);
    }
    const lifetime = typeof body.expires_in === "number" && body.expires_in > 0 ? body.expires_in : 60;
    const header = `Bearer ${token}`;
    // Renewed a little early so a token does not expire between the check and the request.
    this.#tokens.set(key, { header, expires: Date.now() + Math.max(lifetime - 10, 1) * 1000 });
    return header;
  }

  /** Runs `attempt` until it succeeds, fails for good, or `retries` more attempts have failed. */
  async #retrying<T>(what: string, attempt: () => Promise<T>, ref: ImageReference): Promise<T> {
    for (let n = 0; ; n++) {
      try {
        return await attempt();
      } catch (err) {
        if (err instanceof MicrosandboxError) throw err;
        const tls = tlsProblem(err);
        if (tls !== undefined) {
          const hint = this.#isInsecure(ref.registry)
            ? ""
            : `. If ${ref.registry} serves plain HTTP, mark it insecure: new RegistryClient({ insecure: [${JSON.stringify(ref.registry)}] })`;
          throw new RegistryError(`could not speak HTTPS to ${ref.registry} for ${what}: ${tls}${hint}`, undefined, { cause: err });
        }
        const status = err instanceof TransientError ? err.status : undefined;
        if (n >= this.#retries) {
          throw new RegistryError(
            `${what} failed after ${n + 1} attempt${n ? "s" : ""}: ${describe(err)}. ` +
              `Check the network and the registry, or raise the retries option`,
            status,
            { cause: err },
          );
        }
        const delay = this.#retryDelay * 2 ** n * (0.5 + Math.random() / 2);
        debug("registry: %s failed (%s); attempt %d of %d in %d ms", what, describe(err), n + 2, this.#retries + 1, Math.round(delay));
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  async #statusError(res: Response, ref: ImageReference, what: string): Promise<Error> {
    const detail = await errorDetail(res);
    if (res.status >= 500 || res.status === 429) return new TransientError(`${res.status} from ${ref.registry}${detail}`, res.status);
    if (res.status === 401 || res.status === 403) {
      const creds = this.#credentialsFor(ref.registry);
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

  #credentialsFor(registry: string): Credentials | undefined {
    const given = this.#credentials.get(registry);
    if (given) return given;
    this.#dockerAuths ??= readDockerAuths(this.#dockerConfig);
    return this.#dockerAuths.get(registry);
  }
}

/** "https://index.docker.io/v1/" → "docker.io"; "http://127.0.0.1:5000" → "127.0.0.1:5000". */
function normaliseRegistry(name: string): string {
  const host = name.replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
  return host === "index.docker.io" || host === "registry-1.docker.io" ? "docker.io" : host;
}

function readDockerAuths(file: string): Map<string, Credentials> {
  const auths = new Map<string, Credentials>();
  let config: { auths?: Record<string, { auth?: unknown }> };
  try {
    config = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") debug("registry: ignoring %s: %s", file, describe(err));
    return auths;
  }
  for (const [name, entry] of Object.entries(config?.auths ?? {})) {
    if (typeof entry?.auth !== "string" || entry.auth === "") continue;
    const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon <= 0) continue;
    auths.set(normaliseRegistry(name), { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) });
  }
  return auths;
}

function credentialsHint(registry: string): string {
  return (
    `give credentials with new RegistryClient({ credentials: { ${JSON.stringify(registry)}: { username, password } } }) ` +
    `or \`docker login ${registry}\``
  );
}

function basicHeader(creds: Credentials): string {
  if ("token" in creds) return `Bearer ${creds.token}`;
  return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString("base64")}`;
}

function withoutAuthorization(headers: Record<string, string>): Record<string, string> {
  const { authorization: _dropped, ...rest } = headers;
  return rest;
}

/** Parses `WWW-Authenticate`, which may hold several challenges: `Bearer realm="…",scope="…", Basic realm="…"`. */
export function parseChallenges(header: string): { scheme: string; params: Record<string, string> }[] {
  const out: { scheme: string; params: Record<string, string> }[] = [];
  const token = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;
  let i = 0;
  const skip = (chars: RegExp) => {
    while (i < header.length && chars.test(header[i]!)) i++;
  };
  while (i < header.length) {
    skip(/[\s,]/);
    token.lastIndex = i;
    const name = token.exec(header)?.[0];
    if (!name) break;
    i += name.length;
    skip(/\s/);
    if (header[i] !== "=") {
      out.push({ scheme: name.toLowerCase(), params: {} });
      continue;
    }
    i++;
    skip(/\s/);
    let value = "";
    if (header[i] === '"') {
      for (i++; i < header.length && header[i] !== '"'; i++) value += header[i] === "\\" ? header[++i] ?? "" : header[i];
      i++;
    } else {
      for (; i < header.length && !/[\s,]/.test(header[i]!); i++) value += header[i];
    }
    const last = out.at(-1);
    if (last) last.params[name.toLowerCase()] = value;
  }
  return out;
}

function checkDescriptor(d: Partial<Descriptor> | undefined, what: string): asserts d is Descriptor {
  if (!d || !isDigest(d.digest)) {
    throw new RegistryError(`${what}: digest ${JSON.stringify(d?.digest)} is not sha256:<64 hex> or sha512:<128 hex>`);
  }
  if (!Number.isSafeInteger(d.size) || (d.size as number) < 0) {
    throw new RegistryError(`${what}: size ${JSON.stringify(d.size)} of ${d.digest} is not a non-negative integer`);
  }
}

/** The body's chunks; a broken connection surfaces as a TransientError. */
async function* bodyChunks(res: Response, what: string): AsyncGenerator<Uint8Array> {
  if (!res.body) return;
  const reader = res.body.getReader();
  try {
    for (;;) {
      let step;
      try {
        step = await reader.read();
      } catch (err) {
        throw new TransientError(`the connection broke while reading ${what}`, undefined, { cause: err });
      }
      if (step.done) return;
      yield step.value;
    }
  } finally {
    reader.releaseLock();
    await res.body.cancel().catch(() => {});
  }
}

async function readCapped(res: Response, cap: number, what: string): Promise<Buffer> {
  const length = Number(res.headers.get("content-length") ?? NaN);
  if (length > cap) {
    await res.body?.cancel();
    throw new RegistryError(`${what} is ${length} bytes, over the ${cap}-byte limit`, res.status);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of bodyChunks(res, what)) {
    total += chunk.length;
    if (total > cap) throw new RegistryError(`${what} is over the ${cap}-byte limit`, res.status);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** The registry's JSON error ("MANIFEST_UNKNOWN: manifest unknown") as a suffix, or "". */
async function errorDetail(res: Response): Promise<string> {
  try {
    const text = (await readCapped(res, 64 * 1024, "error body")).toString("utf8");
    const errors = (JSON.parse(text) as { errors?: { code?: string; message?: string }[] }).errors;
    const first = errors?.[0];
    if (first) return ` (${[first.code, first.message].filter(Boolean).join(": ")})`;
  } catch {
    // Not JSON, or gone: the status says enough.
  }
  return "";
}

/** The TLS failure behind a fetch error (e.g. "wrong version number" from a plain HTTP port), if it was one. */
function tlsProblem(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined, i = 0; e && i < 5; e = e.cause as typeof e, i++) {
    if (typeof e.code === "string" && /^(ERR_SSL_|ERR_TLS_|EPROTO$|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_)/.test(e.code)) {
      const reason = typeof e.message === "string"
        ? e.message.split("\n")[0]!.replace(/^[0-9A-F]+:error:[0-9A-F]+:/, "").replace(/:[^:\s]*\.c:\d+:?$/, "")
        : "";
      return reason ? `${e.code} (${reason})` : e.code;
    }
  }
  return undefined;
}

function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e = err as { message?: unknown; code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    const text = typeof e.message === "string" ? e.message : String(e);
    if (parts.some((p) => p.includes(text))) continue;
    parts.push(typeof e.code === "string" && !text.includes(e.code) ? `${text} [${e.code}]` : text);
  }
  return parts.join(": ");
}

async function exists(file: string): Promise<boolean> {
  try {
    await (await open(file, "r")).close();
    return true;
  } catch {
    return false;
  }
}
