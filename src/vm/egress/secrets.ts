// The `secrets` option: values the guest never sees. The guest's `$NAME` holds a random
// placeholder; the egress proxy swaps it for the value in requests to the secret's hosts only.
import { createHmac, randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync, readFileSync, writeSync } from "node:fs";
import path from "node:path";

import { InvalidArgumentError } from "../../errors.js";
import { checkKeys, keysOf } from "../../keys.js";
import { cacheDir } from "../../paths.js";
import { checkEntry } from "../netpolicy.js";

/** One secret as the caller gives it. */
export interface SecretOption {
  /** The real value; it stays in the host process. */
  value: string;
  /** Where it may be sent: domains ("api.example.com") or suffixes ("*.example.com", every name below). */
  hosts: string[];
  /** The request headers it may be sent in (case ignored); every header when absent. Never the URL. */
  headers?: string[];
  /**
   * What `$NAME` holds in the guest: "msb_" and 32 hex digits. Default: derived from the name and
   * value with a key of this host's (the same in every sandbox here, and telling nothing of the
   * value). Given back by a forked or resumed sandbox, whose guest already holds it.
   */
  placeholder?: string;
}

/** `secrets`: environment variable name → secret. */
export type SecretsOption = Record<string, SecretOption>;

/** A checked secret, with the placeholder the guest sees in `$name`. */
export interface Secret {
  readonly name: string;
  readonly value: string;
  /** Canonical: lowercase domains and "*."-suffixes. */
  readonly hosts: readonly string[];
  /** Lowercase header names, or undefined for every header. */
  readonly headers: readonly string[] | undefined;
  readonly placeholder: string;
}

export const MAX_SECRETS = 64;
const MAX_VALUE_BYTES = 64 * 1024;
const MAX_HOSTS = 64;
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// RFC 9110's token: what a header name may be made of.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// What Node's http writes in a header value: tab, printable ASCII and the rest of Latin-1.
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Every placeholder starts so; the proxy looks further only where it appears. */
export const PLACEHOLDER_PREFIX = "msb_";
const PLACEHOLDER = /^msb_[0-9a-f]{32}$/;

/**
 * The placeholder of secret `name` with `value` on this host: a keyed hash (HMAC-SHA256, the key
 * random and kept in the cache, 0600), so the same secret gets the same placeholder in every
 * sandbox here (a Python or Node sandbox's snapshot, whose interpreter holds its environment, is
 * made once, not once per sandbox), and the guest learns nothing of the value from it.
 */
function placeholderFor(name: string, value: string): string {
  return PLACEHOLDER_PREFIX + createHmac("sha256", placeholderKey()).update(`${name}\0${value}`).digest("hex").slice(0, 32);
}

const keys = new Map<string, Buffer>(); // by file: the cache dir is read at each call

function placeholderKey(): Buffer {
  const file = path.join(cacheDir(), "secret-placeholders.key");
  let key = keys.get(file);
  if (key) return key;
  try {
    key = readFileSync(file);
  } catch {
    mkdirSync(path.dirname(file), { recursive: true });
    try {
      // Exclusive: of two processes making it, one writes it and both read the same key.
      const fd = openSync(file, "wx", 0o600);
      try {
        writeSync(fd, randomBytes(32));
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    key = readFileSync(file);
  }
  if (key.length !== 32) throw new InvalidArgumentError(`${file} is not a 32-byte key: remove it, and a new one is made`);
  keys.set(file, key);
  return key;
}

/** Checked secrets as an option again, placeholders included: what a fork or a resume is created with. */
export function secretsOption(secrets: readonly Secret[]): SecretsOption {
  return Object.fromEntries(
    secrets.map((s) => [s.name, { value: s.value, hosts: [...s.hosts], ...(s.headers ? { headers: [...s.headers] } : {}), placeholder: s.placeholder }]),
  );
}

/**
 * Checks a sandbox's `secrets` option; each secret gets a fresh random placeholder, or keeps the one
 * it had in `previous` (a guest that already holds `$NAME` must go on being understood).
 * The messages never include a value.
 */
export function checkSecrets(value: unknown, previous: readonly Secret[] = []): Secret[] {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new InvalidArgumentError(
      `secrets must be an object of NAME: { value, hosts, headers? }, got ${Array.isArray(value) ? "an array" : JSON.stringify(value)}`,
    );
  }
  const names = Object.keys(value);
  if (names.length > MAX_SECRETS) {
    throw new InvalidArgumentError(`secrets has ${names.length} entries; at most ${MAX_SECRETS}: keep the ones this sandbox's code needs`);
  }
  return names.map((name) => {
    const where = `secrets.${name}`;
    if (!NAME.test(name)) {
      throw new InvalidArgumentError(
        `secret name ${JSON.stringify(name)} is invalid: it becomes an environment variable, so use letters, digits and _, not starting with a digit (such as "GH_TOKEN")`,
      );
    }
    const s = (value as Record<string, unknown>)[name];
    if (s === null || typeof s !== "object" || Array.isArray(s)) {
      throw new InvalidArgumentError(`${where} must be an object { value, hosts, headers? }`);
    }
    checkKeys("secret option", s, keysOf<SecretOption>({ value: true, hosts: true, headers: true, placeholder: true }));
    const o = s as Record<string, unknown>;
    if (o.placeholder !== undefined && (typeof o.placeholder !== "string" || !PLACEHOLDER.test(o.placeholder))) {
      throw new InvalidArgumentError(`${where}.placeholder ${JSON.stringify(o.placeholder)} is invalid: give "msb_" and 32 hex digits, or leave it out`);
    }
    const secret = checkValue(o.value, where);
    return {
      name,
      value: secret,
      hosts: checkHosts(o.hosts, where),
      headers: checkHeaders(o.headers, where),
      placeholder: (o.placeholder as string | undefined) ?? previous.find((p) => p.name === name)?.placeholder ?? placeholderFor(name, secret),
    };
  });
}

function checkValue(v: unknown, where: string): string {
  if (typeof v !== "string" || v === "") throw new InvalidArgumentError(`${where}.value must be a non-empty string`);
  if (Buffer.byteLength(v) > MAX_VALUE_BYTES) {
    throw new InvalidArgumentError(`${where}.value is ${Buffer.byteLength(v)} bytes; at most ${MAX_VALUE_BYTES} (it travels in an HTTP header)`);
  }
  if (/[\r\n]/.test(v)) throw new InvalidArgumentError(`${where}.value contains a CR or LF, which would split an HTTP header: remove line breaks`);
  if (!HEADER_VALUE.test(v)) {
    throw new InvalidArgumentError(
      `${where}.value contains a control character or one beyond U+00FF, which an HTTP header cannot carry: encode it (base64, percent-encoding) first`,
    );
  }
  return v;
}

function checkHosts(v: unknown, where: string): string[] {
  if (!Array.isArray(v) || v.length === 0) {
    throw new InvalidArgumentError(`${where}.hosts must be a non-empty array of domains such as "api.example.com" or suffixes such as "*.example.com"`);
  }
  if (v.length > MAX_HOSTS) throw new InvalidArgumentError(`${where}.hosts has ${v.length} entries; at most ${MAX_HOSTS}: use "*." suffixes`);
  return [
    ...new Set(
      v.map((h, i) => {
        const entry = checkEntry(h, `${where}.hosts[${i}]`);
        if (entry.includes("/")) {
          throw new InvalidArgumentError(
            `${where}.hosts[${i}] ${JSON.stringify(h)} is an address; a secret is scoped to names, which the proxy checks against the request's Host and TLS name: give a domain such as "api.example.com" or a suffix such as "*.example.com"`,
          );
        }
        return entry;
      }),
    ),
  ];
}

function checkHeaders(v: unknown, where: string): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length === 0) {
    throw new InvalidArgumentError(`${where}.headers must be a non-empty array of header names such as "authorization"; omit it to allow every header`);
  }
  return [
    ...new Set(
      v.map((h, i) => {
        if (typeof h !== "string" || !TOKEN.test(h)) {
          throw new InvalidArgumentError(`${where}.headers[${i}] ${JSON.stringify(h)} is not a header name: use one such as "authorization" or "x-api-key"`);
        }
        return h.toLowerCase();
      }),
    ),
  ];
}

/** The guest's environment for the secrets: NAME → placeholder. */
export function secretEnv(secrets: readonly Secret[]): Record<string, string> {
  return Object.fromEntries(secrets.map((s) => [s.name, s.placeholder]));
}

/**
 * The supervisor's intercept rule tokens for the secrets' hosts, each once: "api.example.com" →
 * "~d:api.example.com" (that name), "*.example.org" → "~s:example.org" (every name below it).
 */
export function interceptRules(secrets: readonly Secret[]): string[] {
  const tokens = secrets.flatMap((s) => s.hosts.map((h) => (h.startsWith("*.") ? `~s:${h.slice(2)}` : `~d:${h}`)));
  return [...new Set(tokens)];
}

/** Whether `host` (lowercase, no trailing dot) is one of `patterns`: a name, or below a "*." suffix. */
export function hostMatches(host: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => (p.startsWith("*.") ? host.endsWith(p.slice(1)) : host === p));
}
