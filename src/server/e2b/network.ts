// E2B's sandbox network (create's `network` and `allow_internet_access`, PUT
// /sandboxes/{id}/network) on the library's: allowOut and denyOut become a policy, each rule's
// header transform becomes injectHeaders for its host with `${e2b.secrets.NAME}` resolved from
// the caller's secrets (secrets.ts), and egressProxy a socks5:// URL. E2B lets allowOut win over
// denyOut: with all traffic denied ("0.0.0.0/0", or allowInternetAccess false) allowOut is the
// allow list, else denyOut is a denylist on "public" that allowOut's entries pass anyway (except).
// An update replaces the whole configuration, as E2B's does: what it omits is cleared.
import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import type { InjectHeadersOption } from "../../vm/machine.js";
import { checkEntry, type NetworkPolicy } from "../../vm/netpolicy.js";
import { ConflictError } from "../errors.js";
import type { SecretStore } from "./secrets.js";
import { type E2bSandbox, type E2bSandboxes, settled } from "./shared.js";

type Rule = { transform?: { headers?: Record<string, string> } };

/** A sandbox's E2B network configuration, checked, as the client gave it (placeholders unresolved). */
export interface E2bNetwork {
  allowInternetAccess?: boolean;
  allowOut?: string[];
  denyOut?: string[];
  rules?: Record<string, Rule[]>;
  egressProxy?: { address: string; username?: string; password?: string };
}

/** What the library is given for an E2B network. */
export interface LibraryNetwork {
  network: NetworkPolicy;
  injectHeaders: InjectHeadersOption;
  egressProxy?: string;
}

/** E2B's all-traffic sentinel (the SDK's allTraffic). */
const ALL_TRAFFIC = "0.0.0.0/0";
const PLACEHOLDER = /\$\{e2b\.([^}]*)\}/g;
const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

function entries(v: unknown, what: string): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw new InvalidArgumentError(`${what} must be an array of CIDRs, addresses and domains, got ${JSON.stringify(v)}`);
  for (const e of v) if (e !== ALL_TRAFFIC) checkEntry(e, `${what} entry`);
  return v as string[];
}

function checkRules(v: unknown): Record<string, Rule[]> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw new InvalidArgumentError("network.rules must be an object of host: [{ transform: { headers } }]");
  for (const [host, list] of Object.entries(v)) {
    const entry = checkEntry(host, "network.rules host");
    if (entry.includes("/")) {
      throw new InvalidArgumentError(
        `network.rules host ${JSON.stringify(host)} is an address: rules here apply to names, such as "api.example.com" or "*.example.com"`,
      );
    }
    if (!Array.isArray(list)) throw new InvalidArgumentError(`network.rules.${host} must be an array of rules`);
    for (const rule of list) {
      if (!isObject(rule)) throw new InvalidArgumentError(`network.rules.${host} has ${JSON.stringify(rule)}, not a rule { transform }`);
      checkKeys("network rule", rule, ["transform"]);
      if (rule.transform === undefined) continue;
      if (!isObject(rule.transform)) throw new InvalidArgumentError(`network.rules.${host} transform must be an object { headers }`);
      checkKeys("network rule transform", rule.transform, ["headers"]);
      const headers = rule.transform.headers;
      if (headers !== undefined && (!isObject(headers) || Object.values(headers).some((h) => typeof h !== "string"))) {
        throw new InvalidArgumentError(`network.rules.${host} transform.headers must be an object of header: string`);
      }
      for (const value of Object.values(headers ?? {})) {
        for (const [, ref] of (value as string).matchAll(PLACEHOLDER)) {
          if (ref!.startsWith("identity.tokens.")) {
            throw new InvalidArgumentError(
              `network.rules.${host} uses \${e2b.${ref}}: workload identity tokens (iam) are not supported by this server; use a secret`,
            );
          }
          if (!ref!.startsWith("secrets."))
            throw new InvalidArgumentError(`network.rules.${host} uses \${e2b.${ref}}, which is no placeholder: use \${e2b.secrets.NAME}`);
        }
      }
    }
  }
  return v as Record<string, Rule[]>;
}

function checkProxy(v: unknown): E2bNetwork["egressProxy"] {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v) || typeof v.address !== "string")
    throw new InvalidArgumentError('network.egressProxy must be { address: "host:port", username?, password? }');
  checkKeys("network egressProxy", v, ["address", "username", "password"]);
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:/@\s]+):\d{1,5}$/.test(v.address)) {
    throw new InvalidArgumentError(`network.egressProxy.address ${JSON.stringify(v.address)} is invalid: give host:port, such as "proxy.example.com:1080"`);
  }
  for (const k of ["username", "password"] as const) {
    if (v[k] !== undefined && (typeof v[k] !== "string" || Buffer.byteLength(v[k]) > 255)) {
      throw new InvalidArgumentError(`network.egressProxy.${k} must be a string of at most 255 bytes`);
    }
  }
  if (v.password !== undefined && v.username === undefined) throw new InvalidArgumentError("network.egressProxy.password needs a username");
  return v as E2bNetwork["egressProxy"];
}

/**
 * Checks create's `network` and `allow_internet_access` (`update`: PUT's body without
 * allow_internet_access, whose keys are the same but for what only a create sets). A create with
 * neither reaches the internet, as E2B's do (and as e2b 2.49, which always sends
 * allow_internet_access, asks).
 */
export function checkE2bNetwork(network: unknown, allowInternetAccess: unknown, update = false): E2bNetwork {
  if (allowInternetAccess !== undefined && typeof allowInternetAccess !== "boolean") {
    throw new InvalidArgumentError(`allow_internet_access must be true or false, got ${JSON.stringify(allowInternetAccess)}`);
  }
  const n = network ?? {};
  if (!isObject(n)) throw new InvalidArgumentError(`network must be an object, got ${JSON.stringify(n)}`);
  const own = ["allowOut", "denyOut", "rules", "egressProxy"];
  checkKeys("network option", n, update ? own : [...own, "allowPublicTraffic", "maskRequestHost", "httpsPorts"]);
  // The getHost relay takes no token, so its URLs are public: what allowPublicTraffic true asks.
  if (n.allowPublicTraffic === false) throw new InvalidArgumentError("network.allowPublicTraffic false is not supported: getHost URLs here take no token");
  for (const k of ["maskRequestHost", "httpsPorts"]) if (n[k] !== undefined) throw new InvalidArgumentError(`network.${k} is not supported by this server`);
  const out: E2bNetwork = {};
  if (allowInternetAccess !== undefined) out.allowInternetAccess = allowInternetAccess as boolean;
  const allowOut = entries(n.allowOut, "network.allowOut");
  const denyOut = entries(n.denyOut, "network.denyOut");
  const rules = checkRules(n.rules);
  const egressProxy = checkProxy(n.egressProxy);
  if (allowOut) out.allowOut = allowOut;
  if (denyOut) out.denyOut = denyOut;
  if (rules) out.rules = rules;
  if (egressProxy) out.egressProxy = egressProxy;
  return out;
}

/** The policy E2B's allowOut, denyOut and allowInternetAccess mean (see the top of this file). */
function policyOf(net: E2bNetwork): NetworkPolicy {
  const allow = net.allowOut ?? [];
  const deny = net.denyOut ?? [];
  // All traffic allowed is the internet, not the host's own network.
  if (allow.includes(ALL_TRAFFIC)) return "public";
  if (net.allowInternetAccess === false || deny.includes(ALL_TRAFFIC)) return { allow };
  if (!allow.length && !deny.length) return "public";
  return { ...(deny.length ? { deny } : {}), ...(allow.length ? { except: allow } : {}) };
}

/** The rules' headers per host, later rules replacing earlier ones' headers, placeholders resolved. */
function injectionsOf(net: E2bNetwork, secret: (name: string) => string): InjectHeadersOption {
  // No prototypes: whatever a client names a header is a key like any other.
  const out: InjectHeadersOption = Object.create(null);
  for (const [host, rules] of Object.entries(net.rules ?? {})) {
    const headers: Record<string, string> = Object.create(null);
    for (const rule of rules) {
      for (const [name, value] of Object.entries(rule.transform?.headers ?? {})) {
        for (const k of Object.keys(headers)) if (k.toLowerCase() === name.toLowerCase()) delete headers[k];
        headers[name] = value.replace(PLACEHOLDER, (_, ref: string) => secret(ref.slice("secrets.".length)));
      }
    }
    if (Object.keys(headers).length) out[host] = headers;
  }
  return out;
}

/** socks5://[user[:password]@]host:port for E2B's egressProxy. */
function proxyUrl(p: NonNullable<E2bNetwork["egressProxy"]>): string {
  const auth = p.username === undefined ? "" : `${encodeURIComponent(p.username)}${p.password === undefined ? "" : `:${encodeURIComponent(p.password)}`}@`;
  return `socks5://${auth}${p.address}`;
}

/** The secrets `net`'s rules name, lowercase. */
export function secretsNamed(net: E2bNetwork): Set<string> {
  const names = new Set<string>();
  for (const rules of Object.values(net?.rules ?? {})) {
    for (const rule of rules) {
      for (const value of Object.values(rule.transform?.headers ?? {})) {
        for (const [, ref] of value.matchAll(PLACEHOLDER)) names.add(ref!.slice("secrets.".length).toLowerCase());
      }
    }
  }
  return names;
}

/** What getInfo says of the network: as configured, placeholders and all, without the proxy's password. */
export function networkInfo(net: E2bNetwork): Record<string, unknown> {
  const { allowInternetAccess, egressProxy, ...rest } = net;
  const proxy = egressProxy && { address: egressProxy.address, ...(egressProxy.username !== undefined ? { username: egressProxy.username } : {}) };
  return { allowInternetAccess: allowInternetAccess ?? null, network: { ...rest, ...(proxy ? { egressProxy: proxy } : {}) } };
}

/** The E2B network of each sandbox on the library's, with the caller's secrets resolved. */
export class E2bNetworks {
  constructor(
    private readonly sandboxes: E2bSandboxes,
    readonly secrets: SecretStore,
  ) {}

  /** What the library is given for `net`, an owner's. */
  library(owner: string, net: E2bNetwork): LibraryNetwork {
    const egressProxy = net.egressProxy && proxyUrl(net.egressProxy);
    return { network: policyOf(net), injectHeaders: injectionsOf(net, (name) => this.secrets.value(owner, name)), ...(egressProxy ? { egressProxy } : {}) };
  }

  /** PUT /sandboxes/{id}/network: holds the running sandbox to `net` from now on. */
  async update({ m, s }: E2bSandbox, net: E2bNetwork): Promise<void> {
    await settled(s);
    if (s.paused) throw new ConflictError(`sandbox ${m.id} is paused: connect to it first`);
    const next = this.library(m.owner, net);
    const proxy = (n: E2bNetwork) => n.egressProxy && proxyUrl(n.egressProxy);
    if (proxy(net) !== proxy(s.network)) {
      throw new InvalidArgumentError(
        "network.egressProxy cannot change on a running sandbox here: send the one it was created with (an update clears what it omits), or create a new sandbox",
      );
    }
    await m.sandbox.updateNetwork(next.network, { injectHeaders: next.injectHeaders });
    s.network = net;
    this.sandboxes.table.persist(m);
  }

  /** The owner's secret `name` changed: its running sandboxes whose rules name it take the new value. */
  async secretChanged(owner: string, name: string): Promise<void> {
    // Paused ones take it when they resume (refresh); one that pauses meanwhile is no failure of the update.
    const users = this.users(owner, name).filter(({ s }) => !s.paused);
    await Promise.allSettled(users.map(({ m, s }) => this.update({ m, s }, s.network)));
  }

  /**
   * A sandbox restored from saved state (a resume, a create from a snapshot) holds the secrets'
   * values as they were saved: its rules take the values they have now.
   */
  async refresh(sb: E2bSandbox): Promise<void> {
    if (secretsNamed(sb.s.network).size) await this.update(sb, sb.s.network);
  }

  /** The ids of the owner's sandboxes whose rules name secret `name`. */
  secretUsers(owner: string, name: string): string[] {
    return this.users(owner, name).map(({ m }) => m.id);
  }

  private users(owner: string, name: string): E2bSandbox[] {
    return this.sandboxes.everyone().filter(({ m, s }) => m.owner === owner && secretsNamed(s.network).has(name));
  }
}
