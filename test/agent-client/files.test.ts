// File operations through the real agent; the agent runs on this host, so results are checked
// against the real files too.
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, lstatSync, readdirSync, readFileSync, symlinkSync } from "node:fs";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AgentClient } from "../../src/agent-client/client.js";
import { AbortError, FileOperationError, InvalidArgumentError } from "../../src/errors.js";
import { type RunningAgent, startAgent } from "./helpers.js";

let agent: RunningAgent;
let client: AgentClient;
let root: string;

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

beforeAll(async () => {
  agent = await startAgent();
  client = await agent.connect();
  root = `${agent.dir}/files`;
  await client.mkdir(root);
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
});

describe("read and write", () => {
  it("writes and reads back a 50 MB file with equal checksums", async () => {
    const data = randomBytes(50 * 1024 * 1024);
    const written = await client.writeFile(`${root}/big.bin`, data);
    expect(written).toBe(data.length);
    expect(sha(readFileSync(`${root}/big.bin`))).toBe(sha(data));
    const back = await client.readFile(`${root}/big.bin`);
    expect(back.length).toBe(data.length);
    expect(sha(back)).toBe(sha(data));
  });

  it("writes from a stream, sets the mode, and creates parents on request", async () => {
    const parts = ["alpha ", Buffer.from("beta "), "gamma"];
    await client.writeFile(`${root}/a/b/c.txt`, Readable.from(parts), { parents: true, mode: 0o600 });
    expect(readFileSync(`${root}/a/b/c.txt`, "utf8")).toBe("alpha beta gamma");
    expect(lstatSync(`${root}/a/b/c.txt`).mode & 0o777).toBe(0o600);
  });

  it("reads a byte range", async () => {
    await client.writeFile(`${root}/range.txt`, "0123456789");
    expect((await client.readFile(`${root}/range.txt`, { offset: 3, length: 4 })).toString()).toBe("3456");
    expect((await client.readFile(`${root}/range.txt`, { offset: 8 })).toString()).toBe("89");
  });

  it("replaces a file atomically and leaves no temporary file behind", async () => {
    await client.writeFile(`${root}/swap.txt`, "old");
    await client.writeFile(`${root}/swap.txt`, "new contents");
    expect(readFileSync(`${root}/swap.txt`, "utf8")).toBe("new contents");
    expect(readdirSync(root).filter((n) => n.includes(".msb-"))).toEqual([]);
  });

  it("cancels a write whose source fails, leaving neither the file nor a temporary", async () => {
    async function* failing() {
      yield Buffer.from("partial");
      throw new Error("source broke");
    }
    await expect(client.writeFile(`${root}/broken.txt`, failing())).rejects.toThrow("source broke");
    await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(`${root}/broken.txt`)).toBe(false);
    expect(readdirSync(root).filter((n) => n.includes(".msb-"))).toEqual([]);
  });

  it("stops a streamed read early and keeps working", async () => {
    await client.writeFile(`${root}/stream.bin`, Buffer.alloc(10 * 1024 * 1024, 1));
    let got = 0;
    for await (const chunk of client.readFileStream(`${root}/stream.bin`)) {
      got += chunk.length;
      if (got > 100_000) break;
    }
    expect(got).toBeLessThan(10 * 1024 * 1024);
    const fds = readdirSync(`/proc/${agent.proc.pid}/fd`).length;
    expect((await client.readFile(`${root}/range.txt`)).toString()).toBe("0123456789");
    await new Promise((r) => setTimeout(r, 50));
    expect(readdirSync(`/proc/${agent.proc.pid}/fd`).length).toBeLessThanOrEqual(fds);
  });

  it("aborts a read through an AbortSignal", async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(client.readFile(`${root}/big.bin`, { signal: ac.signal })).rejects.toBeInstanceOf(AbortError);
  });
});

describe("directories and metadata", () => {
  it("lists, stats, renames and removes", async () => {
    await client.mkdir(`${root}/tree/x/y`, { parents: true });
    await client.mkdir(`${root}/tree/x/y`, { parents: true }); // mkdir -p: existing is fine
    await client.writeFile(`${root}/tree/file.txt`, "12345");
    symlinkSync("file.txt", `${root}/tree/link`);

    const entries = await client.list(`${root}/tree`);
    const byName = Object.fromEntries(entries.map((e) => [e.name, e]));
    expect(Object.keys(byName).sort()).toEqual(["file.txt", "link", "x"]);
    expect(byName["file.txt"]).toMatchObject({ type: "regular", size: 5, mode: 0o644 });
    expect(byName.x!.type).toBe("directory");
    expect(byName.link).toMatchObject({ type: "symlink", linkTarget: "file.txt" });

    const st = await client.stat(`${root}/tree/file.txt`);
    // The agent runs as this process's user here (root in a VM).
    expect(st).toMatchObject({ name: "file.txt", type: "regular", size: 5, uid: process.getuid!() });
    expect(Math.abs(st.mtime.getTime() - Date.now())).toBeLessThan(60_000);

    await client.rename(`${root}/tree/file.txt`, `${root}/tree/renamed.txt`);
    expect(readFileSync(`${root}/tree/renamed.txt`, "utf8")).toBe("12345");

    await expect(client.remove(`${root}/tree`)).rejects.toMatchObject({ errnoName: "ENOTEMPTY" });
    await client.remove(`${root}/tree`, { recursive: true });
    expect(existsSync(`${root}/tree`)).toBe(false);
  });

  it("lists a directory larger than one batch", async () => {
    await client.mkdir(`${root}/many`);
    await Promise.all(Array.from({ length: 600 }, (_, i) => client.writeFile(`${root}/many/f${i}`, String(i))));
    const entries = await client.list(`${root}/many`);
    expect(entries.length).toBe(600);
    expect(new Set(entries.map((e) => e.name)).size).toBe(600);
  });

  it("reports failures with errno names and the path", async () => {
    const missing = await client.stat(`${root}/nope`).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(FileOperationError);
    expect(missing).toMatchObject({ code: "MSB_FILE_OPERATION", errnoName: "ENOENT" });
    expect((missing as Error).message).toContain(`${root}/nope`);
    await expect(client.readFile(root)).rejects.toMatchObject({ errnoName: "EISDIR" });
    await expect(client.mkdir(`${root}/a`)).rejects.toMatchObject({ errnoName: "EEXIST" });
    await expect(client.writeFile(`${root}/no/parent/file`, "x")).rejects.toMatchObject({ errnoName: "ENOENT" });
    await expect(client.list(`${root}/range.txt`)).rejects.toMatchObject({ errnoName: "ENOTDIR" });
    await expect(client.rename(`${root}/nope`, `${root}/nope2`)).rejects.toMatchObject({ errnoName: "ENOENT" });
  });

  it("refuses to stream a FIFO instead of blocking the agent", async () => {
    execFileSync("mkfifo", [`${root}/fifo`]);
    await expect(client.readFile(`${root}/fifo`)).rejects.toMatchObject({ errnoName: "EINVAL" });
    expect((await client.stat(`${root}/fifo`)).type).toBe("fifo");
  });

  it("rejects relative paths before sending", async () => {
    await expect(client.stat("relative/path")).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(() => client.readFileStream("x")).toThrow(/absolute guest path/);
  });
});
