// A hostile guest, as root inside a normal sandbox: whatever it does ends in a typed error on
// that sandbox or is contained in it, while a neighbour sandbox in the same process keeps working
// and this process stays responsive. Real VMs (QEMU; TCG here).
import { once } from "node:events";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AgentConnectionError, CustomSandbox, MicrosandboxError, ResourceError } from "../../src/index.js";

let neighbour: CustomSandbox;

beforeAll(async () => {
  neighbour = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
});

afterAll(async () => {
  await neighbour?.stop();
});

// The neighbour answers, and this process's event loop was not held up meanwhile.
async function neighbourFine(): Promise<void> {
  const lag = await new Promise<number>((resolve) => {
    const t = performance.now();
    setImmediate(() => resolve(performance.now() - t));
  });
  expect(lag).toBeLessThan(500);
  expect(await (await neighbour.command.run("echo", ["fine"])).output()).toBe("fine");
}

async function hostile(body: (sb: CustomSandbox) => Promise<void>, memory = 128): Promise<void> {
  const sb = await CustomSandbox.create({ image: "local:busybox", memory, snapshot: false });
  try {
    await body(sb);
  } finally {
    await sb.stop();
  }
  await neighbourFine();
}

describe("a hostile guest", () => {
  it("crashing its own kernel (sysrq c) fails that sandbox's calls with a typed error", async () => {
    await hostile(async (sb) => {
      const err = await sb.command.run("sh", ["-c", "echo c > /proc/sysrq-trigger; sleep 30"], { timeout: 60 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentConnectionError);
      await expect(sb.command.run("true")).rejects.toBeInstanceOf(MicrosandboxError);
    });
  });

  it("exhausting memory gets its command OOM-killed as a ResourceError; the sandbox goes on", async () => {
    await hostile(async (sb) => {
      // A shell variable doubled until the guest's memory runs out.
      const err = await sb.command.run("sh", ["-c", "x=0123456789abcdef; while :; do x=$x$x; done"], { timeout: 120 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ResourceError);
      expect((err as Error).message).toMatch(/out of memory/i);
      expect(await (await sb.command.run("echo", ["alive"])).output()).toBe("alive");
    });
  });

  it("filling its disk fails the writer, not the sandbox", async () => {
    await hostile(async (sb) => {
      const fill = await sb.command.run("sh", ["-c", "dd if=/dev/zero of=/root/fill bs=1M 2>&1; echo rc=$?"], { timeout: 120 }).then(
        (r) => r.output(),
        (e: unknown) => e,
      );
      // The root's writable layer is guest RAM: either the disk is full or the writer was OOM-killed.
      if (typeof fill === "string") expect(fill).toMatch(/No space left on device|rc=1/);
      else expect(fill).toBeInstanceOf(ResourceError);
      await sb.command.run("rm", ["-f", "/root/fill"]);
      expect(await (await sb.command.run("echo", ["alive"])).output()).toBe("alive");
    });
  });

  it("opening hundreds of connections to the host at once is contained in its VMM", async () => {
    // The host's side: a loopback server that keeps every connection it gets open.
    const held: Socket[] = [];
    const server = createServer((c) => held.push(c.on("error", () => {}))).listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as AddressInfo).port;
    try {
      const sb = await CustomSandbox.create({ image: "local:busybox", memory: 256, network: "all", snapshot: false });
      try {
        // 300 connections held open at once and idle (within the guest's process limit), until killed.
        const proc = sb.command.spawn("sh", ["-c", `i=0; while [ $i -lt 300 ]; do sleep 600 | nc 10.0.2.2 ${port} >/dev/null 2>&1 & i=$((i+1)); done; wait`]);
        for (let waited = 0; held.length < 300 && waited < 100_000; waited += 250) await new Promise((r) => setTimeout(r, 250));
        expect(held.length).toBe(300);
        await neighbourFine();
        proc.kill();
        await proc.exit.catch(() => {});
        expect(await (await sb.command.run("echo", ["alive"])).output()).toBe("alive");
      } finally {
        await sb.stop();
      }
      await neighbourFine();
    } finally {
      for (const c of held) c.destroy();
      server.close();
    }
  }, 150_000);

  it("killing every process it can see and writing to every device it has leaves the agent serving", async () => {
    await hostile(async (sb) => {
      // Everything but the agent's own channel and the console; a write that blocks is cut short.
      const script =
        "kill -9 -1; for d in /dev/*; do [ -c $d ] || continue; case $d in /dev/vport*|/dev/console|/dev/tty*) continue;; esac; " +
        "timeout 2 dd if=/dev/urandom of=$d bs=4096 count=1 2>/dev/null; echo $d; done";
      const wrote = await sb.command.run("sh", ["-c", script], { timeout: 100 });
      expect((await wrote.output()).split("\n").length).toBeGreaterThan(5);
      expect(await (await sb.command.run("echo", ["alive"])).output()).toBe("alive");
    });
  }, 150_000);
});
