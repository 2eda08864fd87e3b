// What a sandbox's network may reach, enforced outside the guest: QEMU's user-mode network stack
// opens every guest connection from QEMU's own process, whose socket calls msb-vmm's network
// supervisor (seccomp user notification) makes itself, held to a list of rules this module writes. Root in the guest
// can change its routes and addresses, not what QEMU's process may reach. The policy is a value
// of its own, so another enforcer (a host-side stack, libkrun's network) can take the same one.
import { readFileSync } from "node:fs";
import { isIPv4, isIPv6 } from "node:net";

import { InvalidArgumentError } from "../errors.js";
import { checkKeys, keysOf } from "../keys.js";
import type { NetworkMode } from "./backend.js";

/**
 * "none": no network device. "public": the internet, but not the host (its loopback, reached as
 * 10.0.2.2), private, shared (CGNAT), link-local (cloud metadata, 169.254.169.254), multicast or
 * reserved addresses. "all": everything the host reaches, the host's own services included.
 * `{ allow, deny }`: entries are CIDRs (an address alone is a /32 or /128), domains
 * ("example.com": that name) or domain suffixes ("*.example.com": every name below it). With
 * `allow`, only those; `deny` refuses on top of "public" or of the allowlist. A domain admits the
 * addresses the host's DNS servers gave for it, and never a non-public one (no rebinding onto the
 * host or its network): admit such ranges by CIDR. `except` (not with `allow`): entries admitted
 * even where `deny` or "public" would refuse them (E2B's allowOut beside a denyOut); a domain
 * there still never admits a non-public address. DNS through the host's resolvers always works
 * while there is a network.
 */
export type NetworkPolicy = "none" | "public" | "all" | { allow?: string[]; deny?: string[]; except?: string[] };

/**
 * What "public" refuses: every address that is not on the public internet. The documentation
 * ranges (TEST-NET, 2001:db8::/32) are not refused: nothing routes them, and tests stand in for
 * the internet with them.
 */
export const NON_PUBLIC = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.88.99.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "224.0.0.0/4",
  "240.0.0.0/4",
  "::/128",
  "::1/128",
  "64:ff9b::/96",
  "64:ff9b:1::/48",
  "2002::/16",
  "100::/64",
  "fc00::/7",
  "fe80::/10",
  "ff00::/8",
];

const MAX_POLICY_ENTRIES = 200;
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const ENTRY_HINT = 'give a CIDR such as "203.0.113.0/24", an address, a domain such as "example.com" or a suffix such as "*.example.com"';

/** A CIDR in canonical text, or InvalidArgumentError naming `what`. */
export function checkCidr(value: unknown, what: string): string {
  if (typeof value !== "string") throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is invalid: ${ENTRY_HINT}`);
  const [addr, bits, extra] = value.split("/");
  const v4 = isIPv4(addr!),
    v6 = isIPv6(addr!);
  const max = v4 ? 32 : 128;
  const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if ((!v4 && !v6) || extra !== undefined || !(prefix >= 0 && prefix <= max))
    throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is invalid: ${ENTRY_HINT}`);
  return `${addr}/${prefix}`;
}

/** A policy entry in canonical form: a CIDR, a lowercase domain, or "*." and a lowercase domain. */
export function checkEntry(value: unknown, what: string): string {
  if (typeof value !== "string" || !/[a-z]/i.test(value) || value.includes(":")) return checkCidr(value, what);
  const name = value.toLowerCase().replace(/\.$/, "");
  const labels = (name.startsWith("*.") ? name.slice(2) : name).split(".");
  if (name.length > 253 || !labels.every((l) => LABEL.test(l)) || !/[a-z]/.test(labels.at(-1)!)) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is invalid: ${ENTRY_HINT}`);
  }
  return name;
}

const isDomain = (entry: string) => !entry.includes("/");

/** Checks a sandbox's `network` option; returns it with its entries canonical. */
export function checkNetwork(value: unknown): NetworkPolicy {
  if (value === "none" || value === "public" || value === "all") return value;
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    checkKeys("network option", value, ["allow", "deny", "except"]);
    const { allow, deny, except } = value as { allow?: unknown; deny?: unknown; except?: unknown };
    const list = (v: unknown, name: string) => {
      if (v === undefined) return undefined;
      if (!Array.isArray(v)) throw new InvalidArgumentError(`network.${name} must be an array of CIDRs and domains, got ${JSON.stringify(v)}`);
      return v.map((c) => checkEntry(c, `network.${name} entry`));
    };
    const out: { allow?: string[]; deny?: string[]; except?: string[] } = {};
    const a = list(allow, "allow"),
      d = list(deny, "deny"),
      e = list(except, "except");
    if (a && e) throw new InvalidArgumentError("network.except goes with deny, not allow: with an allow list, put its entries in allow");
    // msb-vmm's policy holds 256 rules, the host's DNS servers and "public"'s own among them.
    const entries = (a?.length ?? 0) + (d?.length ?? 0) + (e?.length ?? 0);
    if (entries > MAX_POLICY_ENTRIES) {
      throw new InvalidArgumentError(
        `network has ${entries} entries; at most ${MAX_POLICY_ENTRIES} in allow, deny and except together: merge CIDRs into wider ones, domains into "*." suffixes`,
      );
    }
    if (a) out.allow = a;
    if (d) out.deny = d;
    if (e) out.except = e;
    return out;
  }
  throw new InvalidArgumentError(
    `network ${JSON.stringify(value)} is invalid: use "none", "public", "all" or { allow: [...], deny: [...] } of CIDRs and domains`,
  );
}

/** The host's DNS servers, which the guest's resolver (10.0.2.3) forwards to. */
export function nameservers(resolvConf = "/etc/resolv.conf"): string[] {
  let text = "";
  try {
    text = readFileSync(resolvConf, "utf8");
  } catch {
    return [];
  }
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) => m[1]!.replace(/%.*$/, "")).filter((a) => isIPv4(a) || isIPv6(a));
}

/**
 * msb-vmm's rules (--net-policy) for `policy`: "+" admits, "-" refuses, then "CIDR[@PORT]", "d:NAME" (the
 * addresses DNS gave for NAME) or "s:NAME" (for any name below NAME); the first match decides,
 * none matching refuses. Order: the host's DNS servers, denials, CIDR admissions, the non-public
 * ranges (so that no domain admits one), domain admissions; with `except`, its admissions come
 * before the denials, in the same CIDR-first order. "all" admits every address (its VMM
 * is still supervised: raw sockets, io_uring and other families stay refused; its DNS servers are
 * named so that their answers are read, for secrets' hosts). Undefined: "none" has no network.
 */
export function policyRules(policy: NetworkPolicy, dns: string[]): string | undefined {
  if (policy === "none") return undefined;
  const host = (a: string) => (isIPv4(a) ? `${a}/32` : `${a}/128`);
  const rule = (sign: "+" | "-", entry: string) =>
    !isDomain(entry) ? `${sign}${entry}` : entry.startsWith("*.") ? `${sign}s:${entry.slice(2)}` : `${sign}d:${entry}`;
  const rules = dns.map((a) => `+${host(a)}@53`);
  const nonPublic = NON_PUBLIC.map((c) => `-${c}`);
  const any = ["+0.0.0.0/0", "+::/0"];
  if (policy === "all") return [...rules, ...any].join(" ");
  if (policy === "public") return [...rules, ...nonPublic, ...any].join(" ");
  if (policy.except) {
    const ex = policy.except;
    const admitted = [...ex.filter((e) => !isDomain(e)).map((e) => rule("+", e)), ...nonPublic, ...ex.filter(isDomain).map((e) => rule("+", e))];
    return [...rules, ...admitted, ...(policy.deny ?? []).map((e) => rule("-", e)), ...any].join(" ");
  }
  rules.push(...(policy.deny ?? []).map((e) => rule("-", e)));
  if (!policy.allow) return [...rules, ...nonPublic, ...any].join(" ");
  rules.push(...policy.allow.filter((e) => !isDomain(e)).map((e) => rule("+", e)));
  const domains = policy.allow.filter(isDomain);
  if (domains.length) rules.push(...nonPublic, ...domains.map((e) => rule("+", e)));
  return rules.join(" ");
}

/**
 * Why `policy` refused a connection, in words, from the supervisor's refusing rule token (as
 * policyRules wrote it; "" when no rule admitted it): the body of the 403 a refused HTTP request
 * gets.
 */
export function describeRefusal(policy: NetworkPolicy, rule: string): string {
  const entry = rule.replace(/^-/, "").replace(/^d:/, "").replace(/^s:/, "*.");
  if (rule === "") return policy === "none" ? 'the sandbox\'s network is "none"' : "it is not in the sandbox's network allow list";
  if (typeof policy === "object" && policy.deny?.includes(entry)) return `network.deny has ${entry}`;
  if (NON_PUBLIC.includes(entry)) return `${entry} is not a public address: only an allow entry of that CIDR reaches it`;
  return `the rule ${rule} refuses it`;
}

/** A guest TCP port published on a host address (default 127.0.0.1) and port. */
export interface PortForward {
  host: number;
  guest: number;
  address?: string;
}

/** Checks a sandbox's `ports` option (a network is needed to publish any). */
const PORT_KEYS = keysOf<PortForward>({ host: true, guest: true, address: true });

export function checkPorts(value: unknown, policy: NetworkPolicy): PortForward[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(`ports must be an array of { host, guest } objects, got ${JSON.stringify(value)}`);
  if (value.length && policy === "none") throw new InvalidArgumentError('ports need a network: give network "public", "all" or a policy, not "none"');
  const port = (p: unknown, what: string) => {
    if (!Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535)
      throw new InvalidArgumentError(`${what} ${JSON.stringify(p)} is invalid: give a TCP port from 1 to 65535`);
    return p as number;
  };
  return value.map((v: unknown) => {
    if (typeof v !== "object" || v === null)
      throw new InvalidArgumentError(`ports entry ${JSON.stringify(v)} is invalid: give { host, guest } and optionally address`);
    checkKeys("port option", v, PORT_KEYS);
    const { host, guest, address = "127.0.0.1" } = v as PortForward;
    if (!isIPv4(address)) throw new InvalidArgumentError(`ports address ${JSON.stringify(address)} is invalid: give an IPv4 address such as "127.0.0.1"`);
    return { host: port(host, "ports host port"), guest: port(guest, "ports guest port"), address };
  });
}

/** The VM's side of a policy: a network device or none, and the rules its VMM is held to. */
export function vmNetwork(policy: NetworkPolicy): { network: NetworkMode; egress?: string } {
  if (policy === "none") return { network: "none" };
  return { network: "all", egress: policyRules(policy, nameservers())! };
}
