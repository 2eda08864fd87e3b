// sandbox.logs(): commands' output and the sandbox's events, and the guest console, while it
// runs and after it stopped; bounded on disk however much a command prints.
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";

import { CustomSandbox } from "../../src/index.js";
import { cacheDir } from "../../src/paths.js";

describe("sandbox.logs()", () => {
  it("keeps what commands printed, their exits, the events and the console, after the stop too", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, snapshot: false });
    try {
      await sb.command.run("echo", ["hello from echo"]);
      await sb.command.run("sh", ["-c", "echo to-stderr >&2; exit 3"]);
      const p = sb.command.spawn("sh", ["-c", "echo streamed; sleep 0.2; echo again"]);
      for await (const _ of p);
      await p.exit;
      const running = sb.logs({ tail: 1000 });
      expect(running).toContainEqual(expect.objectContaining({ source: "stdout", text: "hello from echo\n", command: "echo" }));
      expect(running).toContainEqual(expect.objectContaining({ source: "event", text: "exited with 0", command: "echo" }));
      expect(running).toContainEqual(expect.objectContaining({ source: "stderr", text: "to-stderr\n", command: "sh" }));
      expect(running).toContainEqual(expect.objectContaining({ source: "event", text: "exited with 3", command: "sh" }));
      expect(
        running
          .filter((e) => e.source === "stdout" && /streamed|again/.test(e.text))
          .map((e) => e.text)
          .join(""),
      ).toBe("streamed\nagain\n");
      expect(running.some((e) => e.source === "event" && /^running on qemu/.test(e.text))).toBe(true);
      expect(running.some((e) => e.source === "console")).toBe(true);
      expect(sb.logs({ tail: 2, sources: ["stdout"] }).map((e) => e.text)).toEqual(["streamed\n", "again\n"]);
    } finally {
      await sb.stop();
    }
    const after = sb.logs({ tail: 1000 });
    expect(after.filter((e) => e.source === "event").at(-1)?.text).toBe("stopped");
    expect(after.some((e) => e.source === "console")).toBe(true);
    expect(after).toContainEqual(expect.objectContaining({ text: "hello from echo\n" }));
  });

  it("stays within about 1 MiB on disk for a command printing 8 MB", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
    try {
      const r = await sb.command.run("sh", ["-c", "head -c 8000000 /dev/zero | tr '\\0' x; echo; echo last-line"]);
      expect(r.stdout.length).toBe(8_000_011);
      const dir = path.join(cacheDir(), "logs", "sandboxes");
      const bytes = readdirSync(dir)
        .filter((f) => f.includes(sb.id))
        .reduce((n, f) => n + statSync(path.join(dir, f)).size, 0);
      expect(bytes).toBeLessThan(1.2 * 2 ** 20);
      const last = sb.logs({ tail: 2 });
      expect(last.map((e) => e.text)).toEqual([expect.stringMatching(/last-line\n$/), "exited with 0"]);
      // The head and the tail of so much output are logged, the middle counted.
      const note = sb.logs({ tail: 100, sources: ["event"] }).find((e) => /bytes of output not logged/.test(e.text));
      expect(Number(note?.text.split(" ")[0])).toBeGreaterThan(7_000_000);
    } finally {
      await sb.stop();
    }
  });
});
