// Who RegistryClient is to each registry: credentials given or from Docker's config.json, answers to
// WWW-Authenticate challenges (a Bearer token from the realm, or Basic), and tokens cached until they expire.
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { debuglog } from "node:util";

import { InvalidArgumentError, MicrosandboxError, RegistryError } from "../errors.js";
import { checkKeys } from "../keys.js";
import { describe, errorDetail, readCapped, TransientError } from "./http.js";
import type { ImageReference } from "./reference.js";

const debug = debuglog("microsandbox");

const TOKEN_MAX_BYTES = 1024 * 1024;

export type Credentials = { username: string; password: string } | { token: string };

/** Checks the `credentials` option and keys it by normalised registry name. */
export function credentialsOption(given: Record<string, Credentials> | undefined): Map<string, Credentials> {
  const credentials = new Map<string, Credentials>();
  for (const [registry, creds] of Object.entries(given ?? {})) {
    const ok =
      creds !== null &&
      typeof creds === "object" &&
      ("token" in creds ? typeof creds.token === "string" && creds.token !== "" : typeof creds.username === "string" && typeof creds.password === "string");
    if (!ok) {
      throw new InvalidArgumentError(`credentials for ${JSON.stringify(registry)} must be { username, password } or { token } with strings`);
    }
    checkKeys("credentials field", creds, "token" in creds ? ["token"] : ["username", "password"]);
    credentials.set(normaliseRegistry(registry), creds);
  }
  return credentials;
}

/** $DOCKER_CONFIG/config.json, or ~/.docker/config.json. */
export function defaultDockerConfig(): string {
  return path.join(process.env.DOCKER_CONFIG || path.join(os.homedir(), ".docker"), "config.json");
}

/** What RegistryAuth needs from its client: the same HTTP (redirect rules, fetch) and insecure list. */
export interface AuthTransport {
  follow(url: string, headers: Record<string, string>): Promise<Response>;
  isInsecure(registry: string): boolean;
}

export class RegistryAuth {
  readonly #credentials: Map<string, Credentials>;
  readonly #dockerConfig: string;
  #dockerAuths: Map<string, Credentials> | undefined;
  readonly #transport: AuthTransport;
  /** Authorization header values by "registry scope", with their expiry (ms since epoch). */
  readonly #tokens = new Map<string, { header: string; expires: number }>();
  /** Registries that asked for Basic auth: later requests send it up front. */
  readonly #basic = new Set<string>();

  /** `dockerConfig` is read when first needed, not here. */
  constructor(credentials: Map<string, Credentials>, dockerConfig: string, transport: AuthTransport) {
    this.#credentials = credentials;
    this.#dockerConfig = dockerConfig;
    this.#transport = transport;
  }

  credentialsFor(registry: string): Credentials | undefined {
    const given = this.#credentials.get(registry);
    if (given) return given;
    this.#dockerAuths ??= readDockerAuths(this.#dockerConfig);
    return this.#dockerAuths.get(registry);
  }

  /** The Authorization to send up front for a pull from `ref`, if one is known. */
  cachedAuthorization(ref: ImageReference): string | undefined {
    const creds = this.credentialsFor(ref.registry);
    if (creds && "token" in creds) return `Bearer ${creds.token}`;
    const token = this.#tokens.get(`${ref.registry} repository:${ref.repository}:pull`);
    if (token && token.expires > Date.now()) return token.header;
    if (creds && this.#basic.has(ref.registry)) return basicHeader(creds);
    return undefined;
  }

  /** Answers a WWW-Authenticate challenge: a Bearer token from the realm, or Basic credentials. */
  async authorize(ref: ImageReference, header: string): Promise<string | undefined> {
    const challenges = parseChallenges(header);
    const creds = this.credentialsFor(ref.registry);
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
    const insecure = (host: string) => this.#transport.isInsecure(host);
    if (realm.protocol !== "https:" && !(realm.protocol === "http:" && (insecure(ref.registry) || insecure(realm.host)))) {
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
    const res = await this.#transport.follow(url.href, headers);
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
}

/** "https://index.docker.io/v1/" → "docker.io"; "http://127.0.0.1:5000" → "127.0.0.1:5000". */
export function normaliseRegistry(name: string): string {
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

export function credentialsHint(registry: string): string {
  return (
    `give credentials with new RegistryClient({ credentials: { ${JSON.stringify(registry)}: { username, password } } }) ` + `or \`docker login ${registry}\``
  );
}

function basicHeader(creds: Credentials): string {
  if ("token" in creds) return `Bearer ${creds.token}`;
  return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString("base64")}`;
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
      for (i++; i < header.length && header[i] !== '"'; i++) value += header[i] === "\\" ? (header[++i] ?? "") : header[i];
      i++;
    } else {
      for (; i < header.length && !/[\s,]/.test(header[i]!); i++) value += header[i];
    }
    const last = out.at(-1);
    if (last) last.params[name.toLowerCase()] = value;
  }
  return out;
}
