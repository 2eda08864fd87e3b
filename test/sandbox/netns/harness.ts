// A small internet built from network namespaces (root on Linux), shared by the tests that need
// one: a namespace that stands for the host (with a service on its loopback, 127.0.0.1:8080),
// joined by a veth pair to a namespace that stands for the internet, holding a public host on a
// TEST-NET address, a second public host, a private address and the cloud metadata address, and
// the DNS server the host's resolv.conf names (`ip netns exec` binds /etc/netns/NAME/resolv.conf).
// No traffic leaves these namespaces.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const usable = process.platform === "linux" && process.getuid?.() === 0 && spawnSync("ip", ["-V"]).status === 0;

const id = randomBytes(3).toString("hex");
export const HOST = `msbt-host-${id}`;
const NET = `msbt-net-${id}`;
export const PUBLIC = "192.0.2.10"; // TEST-NET-1: the public host and the DNS server
export const OTHER = "198.51.100.7"; // TEST-NET-2: a second public host
export const PRIVATE = "10.9.9.9";
export const METADATA = "169.254.169.254";
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

/** Builds the namespaces and starts their services (beforeAll). */
export async function buildInternet(): Promise<void> {
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
}

/** Stops the services and removes the namespaces (afterAll). */
export function removeInternet(): void {
  for (const c of children) c.kill("SIGKILL");
  spawnSync("ip", ["netns", "del", HOST]);
  spawnSync("ip", ["netns", "del", NET]);
  rmSync(`/etc/netns/${HOST}`, { recursive: true, force: true });
}
