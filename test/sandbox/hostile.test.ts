// A hostile guest, as root inside a normal sandbox: whatever it does ends in a typed error on
// that sandbox or is contained in it, while a neighbour sandbox in the same process keeps working
// and this process stays responsive. Real VMs (QEMU; TCG here).
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
      const fill = await sb.command.run("sh", ["-c", "dd if=/dev/zero of=/root/fill bs=1M 2>&1; echo rc=$?"], { timeout: 120 }).then((r) => r.output(), (e: unknown) => e);
      // The root's writable layer is guest RAM: either the disk is full or the writer was OOM-killed.
      if (typeof fill === "string") expect(fill).toMatch(/No space left on device|rc=1/);
      else expect(fill).toBeInstanceOf(ResourceError);
      await sb.command.run("rm", ["-f", "/root/fill"]);
      expect(await (await sb.command.run("echo", ["alive"])).output()).toBe("alive");
    });
  });

  it("killing every process it can see and writing to every device it has leaves the agent serving", async () => {
    await hostile(async (sb) => {
      // Everything but the agent's own channel and the console; a write that blocks is cut short.
      const script = "kill -9 -1; for d in /dev/*; do [ -c $d ] || continue; case $d in /dev/vport*|/dev/console|/dev/tty*) continue;; esac; " +
        "timeout 2 dd if=/dev/urandom of=$d bs=4096 count=1 2>/dev/null; echo $d; done";
      const wrote = await sb.command.run("sh", ["-c", script], { timeout: 100 });
      expect((await wrote.output()).split("\n").length).toBeGreaterThan(5);
      expect(await (await sb.command.run("echo", ["alive"])).output()).toBe("alive");
    });
  }, 150_000);
});
