// A small internet built from network namespaces (root on Linux), shared by the tests that need
// one: a namespace that stands for the host (with a service on its loopback, 127.0.0.1:8080),
// joined by a veth pair to a namespace that stands for the internet, holding a public host on a
// TEST-NET address, a second public host, a private address and the cloud metadata address, and
// the DNS server the host's resolv.conf names (`ip netns exec` binds /etc/netns/NAME/resolv.conf).
// Its web servers answer HTTP on port 80 and HTTPS on 443, with a certificate from a test CA
// (made with openssl; TEST_CA names its certificate) for *.internet.test and pub.test. No traffic
// leaves these namespaces.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const usable = process.platform === "linux" && process.getuid?.() === 0 && spawnSync("ip", ["-V"]).status === 0;

const id = randomBytes(3).toString("hex");
export const HOST = `msbt-host-${id}`;
const NET = `msbt-net-${id}`;
export const PUBLIC = "192.0.2.10"; // TEST-NET-1: the public host and the DNS server
export const OTHER = "198.51.100.7"; // TEST-NET-2: a second public host
export const THIRD = "203.0.113.5"; // TEST-NET-3: a third, which no test's secret names
export const PRIVATE = "10.9.9.9";
export const METADATA = "169.254.169.254";
const NAMES = {
  "pub.test": PUBLIC,
  "api.other.test": OTHER,
  "rebind.test": "10.0.2.2",
  "meta.test": METADATA,
  "private.test": PRIVATE,
  "api.internet.test": PUBLIC,
  "other.internet.test": OTHER,
  "plain.test": THIRD,
};
const tls = path.join(os.tmpdir(), `msbt-tls-${id}`); // made by buildInternet
/** The test internet's CA certificate (PEM file), for NODE_EXTRA_CA_CERTS of a host that talks to it. */
export const TEST_CA = path.join(tls, "ca.pem");

// A CA and a server certificate signed by it, with openssl (a tool of its own, not our CA code).
function makeCertificates() {
  mkdirSync(tls, { mode: 0o700 });
  const openssl = (...args) => execFileSync("openssl", args, { cwd: tls, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test internet CA");
  openssl("req", ...ec, "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=internet.test");
  writeFileSync(path.join(tls, "ext"), `subjectAltName=DNS:*.internet.test,DNS:pub.test,DNS:plain.test,IP:${PUBLIC},IP:${OTHER}\n`);
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext");
}

const ip = (...args) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
const inNs = (ns, ...args) => ip("netns", "exec", ns, ...args);
const children = [];

// Starts a long-lived process in `ns` and waits for its "ready" line.
async function serve(ns, args) {
  const child = spawn("ip", ["netns", "exec", ns, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  await new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => d.toString().includes("ready") && resolve());
    child.once("exit", (code) => reject(new Error(`${args.join(" ")} in ${ns} exited (${code})`)));
  });
}

/** Builds the namespaces and starts their services (beforeAll). */
export async function buildInternet() {
  ip("netns", "add", HOST);
  ip("netns", "add", NET);
  ip("link", "add", `h${id}`, "netns", HOST, "type", "veth", "peer", "name", `n${id}`, "netns", NET);
  inNs(HOST, "ip", "link", "set", "lo", "up");
  inNs(HOST, "ip", "addr", "add", "192.0.2.1/24", "dev", `h${id}`);
  inNs(HOST, "ip", "link", "set", `h${id}`, "up");
  inNs(HOST, "ip", "route", "add", "default", "via", PUBLIC);
  inNs(NET, "ip", "link", "set", "lo", "up");
  inNs(NET, "ip", "addr", "add", `${PUBLIC}/24`, "dev", `n${id}`);
  for (const a of [OTHER, THIRD, PRIVATE, METADATA]) inNs(NET, "ip", "addr", "add", `${a}/32`, "dev", `n${id}`);
  inNs(NET, "ip", "link", "set", `n${id}`, "up");
  mkdirSync(`/etc/netns/${HOST}`, { recursive: true });
  writeFileSync(`/etc/netns/${HOST}/resolv.conf`, `nameserver ${PUBLIC}\n`);
  makeCertificates();
  await serve(NET, [process.execPath, path.join(here, "internet.mjs"), PUBLIC, JSON.stringify(NAMES), tls]);
  // The host's own service, on its loopback only.
  const local = "require('http').createServer((q,s)=>s.end('host-only\\n')).listen(8080,'127.0.0.1',()=>console.log('ready'))";
  await serve(HOST, [process.execPath, "-e", local]);
}

/** Stops the services and removes the namespaces (afterAll). */
export function removeInternet() {
  for (const c of children) c.kill("SIGKILL");
  spawnSync("ip", ["netns", "del", HOST]);
  spawnSync("ip", ["netns", "del", NET]);
  rmSync(`/etc/netns/${HOST}`, { recursive: true, force: true });
  rmSync(tls, { recursive: true, force: true });
}
