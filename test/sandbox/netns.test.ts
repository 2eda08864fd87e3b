// Network policies against a small internet the test builds (netns/harness.ts): the sandbox's
// QEMU runs in the namespace that stands for the host.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { NetworkPolicy } from "../../src/index.js";
import { buildInternet, HOST, METADATA, OTHER, PRIVATE, PUBLIC, removeInternet, usable } from "./netns/harness.mjs";

const here = path.join(path.dirname(fileURLToPath(import.meta.url)), "netns");

beforeAll(async () => {
  if (usable) await buildInternet();
}, 60_000);

afterAll(() => {
  if (usable) removeInternet();
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

// Sends `datagrams` (hex) to the test internet's DNS server from the "host", then a query for
// pub.test, and returns the address its answer holds: the server read the others and lived.
function dnsAfter(datagrams: string[]): string {
  const script = `
    const s = require("dgram").createSocket("udp4");
    const query = (name, type) => Buffer.concat([Buffer.from("abcd01000001000000000000", "hex"),
      ...name.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0, 0, type, 0, 1])]);
    const sent = [...${JSON.stringify(datagrams)}.map((h) => Buffer.from(h, "hex")), query("constructor", 1), query("pub.test", 1)];
    s.on("message", (m) => m.readUInt16BE(6) === 1 && (console.log([...m.subarray(-4)].join(".")), process.exit(0)));
    (async () => { for (const d of sent) { s.send(d, 53, "${PUBLIC}"); await new Promise((r) => setTimeout(r, 50)); } })();
    setTimeout(() => process.exit(1), 5000);`;
  const r = spawnSync("ip", ["netns", "exec", HOST, process.execPath, "-e", script], { encoding: "utf8", timeout: 10_000 });
  if (r.status !== 0) throw new Error(`no answer from the test internet's DNS server (${r.status}): ${r.stderr}`);
  return r.stdout.trim();
}

describe.skipIf(!usable)("the test internet's DNS server", () => {
  it("ignores short, malformed and compressed datagrams and still answers", () => {
    const header = "abcd01000001000000000000";
    expect(
      dnsAfter([
        "", // nothing
        "abcd01", // shorter than a header
        header, // a question promised, none there
        `${header}c00c00010001`, // a compression pointer for a name
        `${header}3f6162`, // a label running past the end
        `${header}03707562`, // a name with no end
        `${header}037075620474657374000001`, // no QCLASS
        "abcd818000010000000000000370756204746573740000010001", // a response, not a query
      ]),
    ).toBe(PUBLIC);
  });
});

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
    // A refused HTTP request (port 80) is answered by the host with a 403 naming why; others are reset.
    expect(outputs[2]).toMatch(/Connection refused|can't connect/);
    expect(outputs[3]).toBe(
      `microsandbox: ${PRIVATE}:80 is refused by the sandbox's network policy (10.0.0.0/8 is not a public address: only an allow entry of that CIDR reaches it)`,
    );
    expect(outputs[4]).toMatch(new RegExp(`^microsandbox: ${METADATA}:80 is refused`));
    for (const refused of outputs.slice(5)) expect(refused).toMatch(/Connection refused|can't connect/);
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
    expect(outputs[0]).toBe(`microsandbox: ${OTHER}:80 is refused by the sandbox's network policy (it is not in the sandbox's network allow list)`);
    expect(outputs.slice(1, 4)).toEqual([`internet ${PUBLIC}`, `internet ${OTHER}`, `internet ${PRIVATE}`]);
    expect(outputs[4]).toMatch(/^microsandbox: 169\.254\.169\.254:80 is refused/);
    expect(outputs[5]).toMatch(refused);
    expect(outputs[6]).toBe(`internet ${PRIVATE}`);
    expect(refusals).toBe(3);
  });

  it('a denied domain is refused under "public" while the rest of the internet answers', () => {
    const { outputs, refusals } = inSandbox({ deny: ["pub.test"] }, [get("pub.test"), get(OTHER)]);
    expect(outputs[0]).toBe(`microsandbox: ${PUBLIC}:80 is refused by the sandbox's network policy (network.deny has pub.test)`);
    expect(outputs[1]).toBe(`internet ${OTHER}`);
    expect(refusals).toBe(1);
  });
});
