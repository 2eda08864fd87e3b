// Network policies, enforced outside the guest. Only loopback carries traffic here: the host's
// own service listens on 127.0.0.1, which a guest reaches as 10.0.2.2; every other destination
// tried is refused by QEMU's supervisor before a packet leaves the host: an HTTP request to port
// 80 gets the host's 403 naming why, any other connection a reset.
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect, createServer as createTcpServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox, type NetworkPolicy } from "../../src/index.js";
import { checkPorts } from "../../src/vm/netpolicy.js";

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
      expect(await tryConnect(sb, "192.168.0.1", 80)).toBe(
        "microsandbox: 192.168.0.1:80 is refused by the sandbox's network policy (192.168.0.0/16 is not a public address: only an allow entry of that CIDR reaches it)",
      );
      expect(await tryConnect(sb, "169.254.169.254", 80)).toMatch(
        /^microsandbox: 169\.254\.169\.254:80 is refused .*169\.254\.0\.0\/16 is not a public address/,
      );
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
      expect(await tryConnect(sb, "192.168.0.1", 80)).toBe(
        "microsandbox: 192.168.0.1:80 is refused by the sandbox's network policy (it is not in the sandbox's network allow list)",
      );
      expect(await tryConnect(sb, "192.168.0.1", 443)).toMatch(/Connection refused|can't connect|Connection reset/);
      expect(sb.networkRefusals).toBe(2);
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
