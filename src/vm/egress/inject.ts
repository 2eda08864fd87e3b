// The `injectHeaders` option: request headers the egress proxy sets on the sandbox's HTTP(S)
// requests to a host, replacing any of that name the guest sent. The guest never sees them, so a
// credential given this way never enters the VM: unlike a secret, whose placeholder the guest
// sends, the host alone decides where it goes.
import { InvalidArgumentError } from "../../errors.js";
import { checkEntry } from "../netpolicy.js";

/** Host ("api.example.com", or "*.example.com": every name below it) → header name → value. */
export type InjectHeadersOption = Record<string, Record<string, string>>;

const MAX_HOSTS = 64;
const MAX_HEADERS = 32;
const MAX_VALUE_BYTES = 64 * 1024;
// RFC 9110's token, and what Node's http writes in a header value (tab, printable ASCII, Latin-1).
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
// The proxy frames and routes each request itself: these are never the option's to set.
const RESERVED = new Set(["host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]);

/** Checks `injectHeaders`; returns it canonical (lowercase hosts and header names). Messages never include a value. */
export function checkInjectHeaders(value: unknown): InjectHeadersOption {
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);
  if (!isObject(value))
    throw new InvalidArgumentError('injectHeaders must be an object of host: { header: value }, such as { "api.example.com": { authorization: "Bearer …" } }');
  const hosts = Object.keys(value);
  if (hosts.length > MAX_HOSTS) throw new InvalidArgumentError(`injectHeaders has ${hosts.length} hosts; at most ${MAX_HOSTS}: use "*." suffixes`);
  // No prototype: a header named __proto__ is a key like any other.
  const out: InjectHeadersOption = Object.create(null);
  for (const host of hosts) {
    const entry = checkEntry(host, "injectHeaders host");
    if (entry.includes("/")) {
      throw new InvalidArgumentError(
        `injectHeaders host ${JSON.stringify(host)} is an address; headers are set by the request's name, which the proxy checks against its Host and TLS name: give a domain such as "api.example.com" or a suffix such as "*.example.com"`,
      );
    }
    if (Object.hasOwn(out, entry)) throw new InvalidArgumentError(`injectHeaders names ${entry} twice: merge its headers into one entry`);
    const headers = value[host];
    if (!isObject(headers) || !Object.keys(headers).length) throw new InvalidArgumentError(`injectHeaders.${host} must be a non-empty object of header: value`);
    const names = Object.keys(headers);
    if (names.length > MAX_HEADERS) throw new InvalidArgumentError(`injectHeaders.${host} has ${names.length} headers; at most ${MAX_HEADERS}`);
    const set: Record<string, string> = Object.create(null);
    for (const name of names) {
      const lower = name.toLowerCase();
      const where = `injectHeaders.${host}.${name}`;
      if (!TOKEN.test(name)) throw new InvalidArgumentError(`${where}: ${JSON.stringify(name)} is not a header name: use one such as "authorization"`);
      if (RESERVED.has(lower)) throw new InvalidArgumentError(`${where}: the proxy frames and routes each request itself, so ${lower} cannot be set`);
      if (Object.hasOwn(set, lower)) throw new InvalidArgumentError(`${where}: header ${lower} is given twice (names are case-insensitive)`);
      const v = headers[name];
      if (typeof v !== "string") throw new InvalidArgumentError(`${where} must be a string`);
      if (Buffer.byteLength(v) > MAX_VALUE_BYTES) throw new InvalidArgumentError(`${where} is ${Buffer.byteLength(v)} bytes; at most ${MAX_VALUE_BYTES}`);
      if (!HEADER_VALUE.test(v)) {
        throw new InvalidArgumentError(`${where} contains a line break, a control character or one beyond U+00FF, which an HTTP header cannot carry`);
      }
      set[lower] = v;
    }
    out[entry] = set;
  }
  return out;
}

/**
 * The headers to set on a request to `host` (lowercase, no trailing dot): its exact entry, else
 * the longest "*." suffix above it; entries are not merged, so a narrower one replaces a wider.
 */
export function injectionFor(host: string, inject: InjectHeadersOption): Record<string, string> | undefined {
  if (Object.hasOwn(inject, host)) return inject[host];
  let best: string | undefined;
  for (const pattern of Object.keys(inject)) {
    if (pattern.startsWith("*.") && host.endsWith(pattern.slice(1)) && (!best || pattern.length > best.length)) best = pattern;
  }
  return best ? inject[best] : undefined;
}

/** The hosts to intercept for `inject`, as the supervisor's tokens ("~d:NAME", "~s:SUFFIX"). */
export function injectInterceptRules(inject: InjectHeadersOption): string[] {
  return Object.keys(inject).map((h) => (h.startsWith("*.") ? `~s:${h.slice(2)}` : `~d:${h}`));
}

export const hasInjections = (inject: InjectHeadersOption | undefined): boolean => !!inject && Object.keys(inject).length > 0;
