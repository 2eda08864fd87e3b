// Network policies, enforced outside the guest. Only loopback carries traffic here: the host's
// own service listens on 127.0.0.1, which a guest reaches as 10.0.2.2; every other destination
// tried is refused inside QEMU's process before a packet leaves it.
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect, createServer as createTcpServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox, InvalidArgumentError, type NetworkPolicy } from "../../src/index.js";
import { checkNetwork, checkPorts, NON_PUBLIC, policyRules } from "../../src/vm/netpolicy.js";

let server: Server;
let port: number;

beforeAll(async () => {
  server = createServer((_, res) => res.end("host-only\n")).listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  port = (server.address() as AddressInfo).port;
});

afterAll(() => server.close());

// What `nc` in the guest makes of a connection to ADDRESS:PORT: the host service's answer, or
// its error (a refusal is immediate: a hang would end in nc's own timeout instead).
async function tryConnect(sb: CustomSandbox, address: string, to = port): Promise<string> {
  const r = await sb.command.run("sh", ["-c", `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 20 ${address} ${to} 2>&1 | tail -1`]);
  return (await r.output()).trim();
}

async function withSandbox(network: NetworkPolicy, body: (sb: CustomSandbox) => Promise<void>) {
  const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, network });
  try {
    await body(sb);
  } finally {
    await sb.stop();
  }
}

describe("network policies", () => {
  it('"public" refuses the host, private addresses and cloud metadata at once, and counts each', async () => {
    await withSandbox("public", async (sb) => {
      expect(await tryConnect(sb, "10.0.2.2")).toMatch(/Connection refused/);
      expect(await tryConnect(sb, "192.168.0.1", 80)).toMatch(/Connection refused/);
      expect(await tryConnect(sb, "169.254.169.254", 80)).toMatch(/Connection refused/);
      expect(sb.networkRefusals).toBe(3);
      // Root in the guest owns its routes and addresses, not QEMU's sockets.
      const ip = await sb.command.run("sh", ["-c", "ip addr add 10.0.2.77/24 dev eth0 && ip route replace default via 10.0.2.2 dev eth0"]);
      expect(ip.exitCode).toBe(0);
      expect(await tryConnect(sb, "10.0.2.2")).toMatch(/Connection refused/);
      expect(sb.networkRefusals).toBe(4);
    });
  });

  it('"all" reaches the host\'s own services', async () => {
    await withSandbox("all", async (sb) => {
      expect(await tryConnect(sb, "10.0.2.2")).toBe("host-only");
      expect(sb.networkRefusals).toBe(0);
    });
  });

  it("an allowlist admits exactly its CIDRs", async () => {
    await withSandbox({ allow: ["127.0.0.1"] }, async (sb) => {
      expect(await tryConnect(sb, "10.0.2.2")).toBe("host-only");
      expect(await tryConnect(sb, "192.168.0.1", 80)).toMatch(/Connection refused/);
      expect(sb.networkRefusals).toBe(1);
    });
  });
});

describe("published ports", () => {
  // A free port on 127.0.0.1, as the kernel hands them out.
  const freePort = async () => {
    const s = createTcpServer().listen(0, "127.0.0.1");
    await new Promise((r) => s.once("listening", r));
    const p = (s.address() as AddressInfo).port;
    await new Promise((r) => s.close(r));
    return p;
  };

  it("answers on 127.0.0.1 for a guest server, under a policy too; a fork publishes only its own", async () => {
    const host = await freePort();
    // No network given: publishing a port makes it "public".
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, ports: [{ host, guest: 8080 }] });
    try {
      const server = sb.command.spawn("sh", ["-c", "echo from-the-guest | nc -l -p 8080"]);
      let answer = "";
      for (let i = 0; i < 50 && !answer; i++) {
        answer = await new Promise<string>((resolve) => {
          const c = connect(host, "127.0.0.1");
          let got = "";
          c.on("data", (d) => (got += d.toString()));
          c.on("close", () => resolve(got.trim()));
          c.on("error", () => resolve(""));
        });
        if (!answer) await new Promise((r) => setTimeout(r, 200));
      }
      expect(answer).toBe("from-the-guest");
      await server.exit;
      const copy = await sb.fork();
      await copy.stop();
    } finally {
      await sb.stop();
    }
  });

  it("refuses ports without a network and bad port values, naming them", () => {
    expect(() => checkPorts([{ host: 8080, guest: 80 }], "none")).toThrow(/ports need a network/);
    expect(() => checkPorts([{ host: 0, guest: 80 }], "public")).toThrow(/ports host port 0 is invalid/);
    expect(() => checkPorts([{ host: 8080, guest: 80, address: "localhost" }], "public")).toThrow(/ports address "localhost" is invalid/);
    expect(checkPorts([{ host: 8080, guest: 80 }], "all")).toEqual([{ host: 8080, guest: 80, address: "127.0.0.1" }]);
  });
});

describe("network policy values", () => {
  it("checks and normalizes what it is given, naming a bad value", () => {
    expect(checkNetwork("public")).toBe("public");
    expect(checkNetwork({ allow: ["203.0.113.7", "2001:db8::/32"], deny: ["198.51.100.0/24"] })).toEqual({ allow: ["203.0.113.7/32", "2001:db8::/32"], deny: ["198.51.100.0/24"] });
    expect(() => checkNetwork("private")).toThrow(/network "private" is invalid: use "none", "public", "all"/);
    expect(() => checkNetwork({ allow: ["10.0.0.0/33"] })).toThrow(InvalidArgumentError);
    expect(checkNetwork({ allow: ["Example.COM.", "*.pypi.org"] })).toEqual({ allow: ["example.com", "*.pypi.org"] });
    expect(() => checkNetwork({ allow: ["exa mple.com"] })).toThrow(/"exa mple.com" is invalid: give a CIDR .* a domain such as "example.com"/);
    expect(() => checkNetwork({ allow: ["*example.com"] })).toThrow(InvalidArgumentError);
    expect(() => checkNetwork({ allow: ["-bad.example.com"] })).toThrow(InvalidArgumentError);
    expect(() => checkNetwork({ allow: ["10.0.0.300"] })).toThrow(InvalidArgumentError);
    expect(() => checkNetwork({ allow: "10.0.0.0/8" })).toThrow(/network.allow must be an array/);
    expect(() => checkNetwork({ alow: [] })).toThrow(/unknown network option "alow": did you mean "allow"\?/);
    expect(() => checkNetwork({ deny: Array.from({ length: 201 }, (_, i) => `198.51.${i >> 8}.${i & 255}`) })).toThrow(/201 entries; at most 200/);
  });

  it("writes rules where DNS comes first, denials before admissions, and nothing else passes", () => {
    expect(policyRules("all", ["10.0.0.53"])).toBeUndefined();
    expect(policyRules("none", [])).toBeUndefined();
    const pub = policyRules("public", ["10.0.0.53", "fd00::53"])!.split(" ");
    expect(pub.slice(0, 2)).toEqual(["+10.0.0.53/32@53", "+fd00::53/128@53"]);
    expect(pub).toContain("-127.0.0.0/8");
    expect(pub).toContain("-169.254.0.0/16");
    expect(pub.slice(-2)).toEqual(["+0.0.0.0/0", "+::/0"]);
    expect(pub.length).toBe(2 + NON_PUBLIC.length + 2);
    expect(policyRules({ allow: ["203.0.113.0/24"], deny: ["203.0.113.9/32"] }, [])).toBe("-203.0.113.9/32 +203.0.113.0/24");
    // Domains come last, behind the non-public ranges: no name admits the host or its network.
    const named = policyRules({ allow: ["10.1.0.0/16", "pypi.org", "*.pythonhosted.org"], deny: ["evil.pypi.org"] }, ["10.0.0.53"])!.split(" ");
    expect(named.slice(0, 3)).toEqual(["+10.0.0.53/32@53", "-d:evil.pypi.org", "+10.1.0.0/16"]);
    expect(named.slice(3, -2)).toEqual(NON_PUBLIC.map((c) => `-${c}`));
    expect(named.slice(-2)).toEqual(["+d:pypi.org", "+s:pythonhosted.org"]);
  });
});
