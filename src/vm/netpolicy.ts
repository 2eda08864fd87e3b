// What a sandbox's network may reach, enforced outside the guest: QEMU's user-mode network stack
// opens every guest connection from QEMU's own process, where msb-netpolicy.so (preloaded by
// msb-vmm) holds connect/sendto/sendmsg to a list of rules this module writes. Root in the guest
// can change its routes and addresses, not what QEMU's process may reach. The policy is a value
// of its own, so another enforcer (a host-side stack, libkrun's network) can take the same one.
import { readFileSync } from "node:fs";
import { isIPv4, isIPv6 } from "node:net";

import { InvalidArgumentError } from "../errors.js";
import type { NetworkMode } from "./backend.js";

/**
 * "none": no network device. "public": the internet, but not the host (its loopback, reached as
 * 10.0.2.2), private, shared (CGNAT), link-local (cloud metadata, 169.254.169.254), multicast or
 * reserved addresses. "all": everything the host reaches, the host's own services included.
 * `{ allow, deny }`: with `allow`, only those CIDRs (an address alone is a /32 or /128); `deny`
 * refuses CIDRs on top of "public" or of the allowlist. DNS through the host's resolvers always
 * works while there is a network.
 */
export type NetworkPolicy = "none" | "public" | "all" | { allow?: string[]; deny?: string[] };

/** What "public" refuses: every address that is not on the public internet. */
export const NON_PUBLIC = [
  "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
  "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
  "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
];

const MAX_POLICY_CIDRS = 200;

/** A CIDR in canonical text, or InvalidArgumentError naming `what`. */
export function checkCidr(value: unknown, what: string): string {
  if (typeof value !== "string") throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is invalid: give a CIDR such as "203.0.113.0/24" or an address`);
  const [addr, bits, extra] = value.split("/");
  const v4 = isIPv4(addr!), v6 = isIPv6(addr!);
  const max = v4 ? 32 : 128;
  const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if ((!v4 && !v6) || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
    const hint = /[a-z]/i.test(addr ?? "") && !v6 ? " (domain names are not supported yet: give the addresses)" : "";
    throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is invalid: give a CIDR such as "203.0.113.0/24", "2001:db8::/32" or an address${hint}`);
  }
  return `${addr}/${prefix}`;
}

/** Checks a sandbox's `network` option; returns it with its CIDRs canonical. */
export function checkNetwork(value: unknown): NetworkPolicy {
  if (value === "none" || value === "public" || value === "all") return value;
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const { allow, deny, ...rest } = value as { allow?: unknown; deny?: unknown };
    const unknown = Object.keys(rest);
    if (unknown.length) throw new InvalidArgumentError(`network has unknown field ${JSON.stringify(unknown[0])}: use { allow: [CIDR...], deny: [CIDR...] }`);
    const list = (v: unknown, name: string) => {
      if (v === undefined) return undefined;
      if (!Array.isArray(v)) throw new InvalidArgumentError(`network.${name} must be an array of CIDRs, got ${JSON.stringify(v)}`);
      return v.map((c) => checkCidr(c, `network.${name} entry`));
    };
    const out: { allow?: string[]; deny?: string[] } = {};
    const a = list(allow, "allow"), d = list(deny, "deny");
    // msb-netpolicy holds 256 rules, the host's DNS servers and "public"'s own among them.
    if ((a?.length ?? 0) + (d?.length ?? 0) > MAX_POLICY_CIDRS) {
      throw new InvalidArgumentError(`network has ${(a?.length ?? 0) + (d?.length ?? 0)} CIDRs; at most ${MAX_POLICY_CIDRS} in allow and deny together: merge them into wider ones`);
    }
    if (a) out.allow = a;
    if (d) out.deny = d;
    return out;
  }
  throw new InvalidArgumentError(`network ${JSON.stringify(value)} is invalid: use "none", "public", "all" or { allow: [CIDR...], deny: [CIDR...] }`);
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
 * msb-netpolicy's rules for `policy`: "+CIDR[@PORT]" admits, "-CIDR" refuses, the first match
 * decides, none matching refuses. Undefined: nothing to hold ("none" has no network, "all" is
 * unrestricted).
 */
export function policyRules(policy: NetworkPolicy, dns: string[]): string | undefined {
  if (policy === "none" || policy === "all") return undefined;
  const host = (a: string) => (isIPv4(a) ? `${a}/32` : `${a}/128`);
  const rules = dns.flatMap((a) => [`+${host(a)}@53`]);
  const any = ["+0.0.0.0/0", "+::/0"];
  if (policy === "public") return [...rules, ...NON_PUBLIC.map((c) => `-${c}`), ...any].join(" ");
  rules.push(...(policy.deny ?? []).map((c) => `-${c}`));
  if (policy.allow) rules.push(...policy.allow.map((c) => `+${c}`));
  else rules.push(...NON_PUBLIC.map((c) => `-${c}`), ...any);
  return rules.join(" ");
}

/** A guest TCP port published on a host address (default 127.0.0.1) and port. */
export interface PortForward {
  host: number;
  guest: number;
  address?: string;
}

/** What a network asks of a backend: a device or none, and what only QEMU's network can do. */
export function vmRequest(policy: NetworkPolicy, ports: readonly PortForward[] = []): { network: NetworkMode; qemuNetwork?: string } {
  const needs = [policy !== "none" && policy !== "all" && "a network policy", ports.length > 0 && "published ports"].filter(Boolean);
  return { network: policy === "none" ? "none" : "all", ...(needs.length ? { qemuNetwork: needs.join(" and ") } : {}) };
}

/** Checks a sandbox's `ports` option (a network is needed to publish any). */
export function checkPorts(value: unknown, policy: NetworkPolicy): PortForward[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(`ports must be an array of { host, guest } objects, got ${JSON.stringify(value)}`);
  if (value.length && policy === "none") throw new InvalidArgumentError('ports need a network: give network "public", "all" or a policy, not "none"');
  const port = (p: unknown, what: string) => {
    if (!Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535) throw new InvalidArgumentError(`${what} ${JSON.stringify(p)} is invalid: give a TCP port from 1 to 65535`);
    return p as number;
  };
  return value.map((v: unknown) => {
    const { host, guest, address = "127.0.0.1", ...rest } = (v ?? {}) as PortForward & Record<string, unknown>;
    if (typeof v !== "object" || v === null || Object.keys(rest).length) throw new InvalidArgumentError(`ports entry ${JSON.stringify(v)} is invalid: give { host, guest } and optionally address`);
    if (!isIPv4(address)) throw new InvalidArgumentError(`ports address ${JSON.stringify(address)} is invalid: give an IPv4 address such as "127.0.0.1"`);
    return { host: port(host, "ports host port"), guest: port(guest, "ports guest port"), address };
  });
}

/** The VM's side of a policy: a network device or none, and the rules its VMM is held to. */
export function vmNetwork(policy: NetworkPolicy): { network: NetworkMode; egress?: string } {
  if (policy === "none") return { network: "none" };
  const egress = policyRules(policy, nameservers());
  return egress === undefined ? { network: "all" } : { network: "all", egress };
}
