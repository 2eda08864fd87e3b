// Network policies against a small internet the test builds (root on Linux): a namespace that
// stands for the host (the sandbox's QEMU runs there, with a service on its loopback), joined by a
// veth pair to a namespace that stands for the internet, holding a public host on a TEST-NET
// address, a second public host, a private address and the cloud metadata address, and the DNS
// server the host's resolv.conf names (`ip netns exec` binds /etc/netns/NAME/resolv.conf). No
// traffic leaves these namespaces.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { NetworkPolicy } from "../../src/index.js";

const here = path.join(path.dirname(fileURLToPath(import.meta.url)), "netns");
const usable = process.platform === "linux" && process.getuid?.() === 0 && spawnSync("ip", ["-V"]).status === 0;

const id = randomBytes(3).toString("hex");
const HOST = `msbt-host-${id}`;
const NET = `msbt-net-${id}`;
const PUBLIC = "192.0.2.10"; // TEST-NET-1: the public host and the DNS server
const OTHER = "198.51.100.7"; // TEST-NET-2: a second public host
const PRIVATE = "10.9.9.9";
const METADATA = "169.254.169.254";
const NAMES = { "pub.test": PUBLIC, "api.other.test": OTHER, "rebind.test": "10.0.2.2", "meta.test": METADATA, "private.test": PRIVATE };

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
const inNs = (ns: string, ...args: string[]) => ip("netns", "exec", ns, ...args);
const children: ChildProcess[] = [];

// Starts a long-lived process in `ns` and waits for its "ready" line.
async function serve(ns: string, args: string[]): Promise<void> {
  const child = spawn("ip", ["netns", "exec", ns, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.once("exit", (code) => reject(new Error(`${args.join(" ")} in ${ns} exited (${code})`)));
  });
}

beforeAll(async () => {
  if (!usable) return;
  ip("netns", "add", HOST);
  ip("netns", "add", NET);
  ip("link", "add", `h${id}`, "netns", HOST, "type", "veth", "peer", "name", `n${id}`, "netns", NET);
  inNs(HOST, "ip", "link", "set", "lo", "up");
  inNs(HOST, "ip", "addr", "add", "192.0.2.1/24", "dev", `h${id}`);
  inNs(HOST, "ip", "link", "set", `h${id}`, "up");
  inNs(HOST, "ip", "route", "add", "default", "via", PUBLIC);
  inNs(NET, "ip", "link", "set", "lo", "up");
  inNs(NET, "ip", "addr", "add", `${PUBLIC}/24`, "dev", `n${id}`);
  for (const a of [OTHER, PRIVATE, METADATA]) inNs(NET, "ip", "addr", "add", `${a}/32`, "dev", `n${id}`);
  inNs(NET, "ip", "link", "set", `n${id}`, "up");
  mkdirSync(`/etc/netns/${HOST}`, { recursive: true });
  writeFileSync(`/etc/netns/${HOST}/resolv.conf`, `nameserver ${PUBLIC}\n`);
  await serve(NET, [process.execPath, path.join(here, "internet.mjs"), PUBLIC, JSON.stringify(NAMES)]);
  // The host's own service, on its loopback only.
  const local = "require('http').createServer((q,s)=>s.end('host-only\\n')).listen(8080,'127.0.0.1',()=>console.log('ready'))";
  await serve(HOST, [process.execPath, "-e", local]);
}, 60_000);

afterAll(() => {
  if (!usable) return;
  for (const c of children) c.kill("SIGKILL");
  spawnSync("ip", ["netns", "del", HOST]);
  spawnSync("ip", ["netns", "del", NET]);
  rmSync(`/etc/netns/${HOST}`, { recursive: true, force: true });
});

// Runs `commands` in a sandbox with `policy`, created by a program running on the "host".
function inSandbox(policy: NetworkPolicy, commands: string[]): { outputs: string[]; refusals: number } {
  const r = spawnSync("ip", ["netns", "exec", HOST, process.execPath, path.join(here, "guest.mjs"), JSON.stringify(policy), JSON.stringify(commands)], {
    encoding: "utf8",
    timeout: 150_000,
  });
  if (r.status !== 0) throw new Error(`the sandbox program failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!);
}

// An HTTP request from the guest with busybox's nc: the body's last line, or nc's error.
const get = (target: string) => {
  const [host, port = "80"] = target.split(":");
  return `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 20 ${host} ${port}`;
};

describe.skipIf(!usable)("network policies on a test-built internet", () => {
  it('"public": the public host by name and address; not the host\'s loopback, a private address or cloud metadata', () => {
    const { outputs, refusals } = inSandbox("public", [
      get("pub.test"),
      get(OTHER),
      get("10.0.2.2:8080"),
      get(PRIVATE),
      get(METADATA),
      get("rebind.test:8080"),
      // Root in the guest rewrites its routes and addresses, and gains nothing.
      `ip addr add 10.0.2.77/24 dev eth0 && ip route replace default via 10.0.2.2 dev eth0 && ${get("10.0.2.2:8080")}`,
    ]);
    expect(outputs.slice(0, 2)).toEqual([`internet ${PUBLIC}`, `internet ${OTHER}`]);
    for (const refused of outputs.slice(2)) expect(refused).toMatch(/Connection refused|can't connect/);
    expect(refusals).toBe(5);
  });

  it("an allowlist admits exactly its domains and CIDRs, and no domain admits a non-public address", () => {
    const { outputs, refusals } = inSandbox({ allow: ["pub.test", "*.other.test", PRIVATE] }, [
      get(OTHER), // not yet resolved for an allowed name: refused
      get("pub.test"),
      get("api.other.test"),
      get(PRIVATE),
      get("meta.test"),
      get("rebind.test:8080"), // resolves to the host (10.0.2.2)
      get("private.test"), // resolves to an address the allowlist admits by CIDR
    ]);
    const refused = /Connection refused|can't connect/;
    expect(outputs[0]).toMatch(refused);
    expect(outputs.slice(1, 4)).toEqual([`internet ${PUBLIC}`, `internet ${OTHER}`, `internet ${PRIVATE}`]);
    expect(outputs[4]).toMatch(refused);
    expect(outputs[5]).toMatch(refused);
    expect(outputs[6]).toBe(`internet ${PRIVATE}`);
    expect(refusals).toBe(3);
  });

  it('a denied domain is refused under "public" while the rest of the internet answers', () => {
    const { outputs, refusals } = inSandbox({ deny: ["pub.test"] }, [get("pub.test"), get(OTHER)]);
    expect(outputs[0]).toMatch(/Connection refused|can't connect/);
    expect(outputs[1]).toBe(`internet ${OTHER}`);
    expect(refusals).toBe(1);
  });
});
