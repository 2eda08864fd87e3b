// sandbox.fs: guest file operations, and copies between host and guest. Names coming back from
// the guest are untrusted: copyOut refuses any that could leave the target directory and never
// creates symbolic links or special files on the host.
import { createReadStream, createWriteStream } from "node:fs";
import { lstat, mkdir, readdir } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";

import type { AgentClient, FileData, FileStat, ReadFileOptions, WriteFileOptions } from "../agent-client/client.js";
import type { FsWatch } from "../agent-client/watch.js";
import { AgentProtocolError, InvalidArgumentError } from "../errors.js";

export class SandboxFiles {
  constructor(private readonly agent: () => AgentClient) {}

  read(guestPath: string, opts?: ReadFileOptions): Promise<Buffer> {
    return this.agent().readFile(guestPath, opts);
  }

  async readText(guestPath: string, opts?: ReadFileOptions): Promise<string> {
    return (await this.read(guestPath, opts)).toString("utf8");
  }

  /** Streams a guest file. */
  readStream(guestPath: string, opts?: ReadFileOptions): AsyncIterableIterator<Buffer> {
    return this.agent().readFileStream(guestPath, opts);
  }

  /** Writes a guest file atomically (parents created by default); resolves with the bytes written. */
  write(guestPath: string, data: FileData, opts: WriteFileOptions = {}): Promise<number> {
    return this.agent().writeFile(guestPath, data, { parents: true, ...opts });
  }

  list(guestPath: string): Promise<FileStat[]> {
    return this.agent().list(guestPath);
  }

  stat(guestPath: string): Promise<FileStat> {
    return this.agent().stat(guestPath);
  }

  /**
   * Changes under the guest directory `guestPath` (with `recursive`, below it too), in order:
   * `for await (const e of sandbox.fs.watch("/work", { recursive: true }))`, each
   * { type: create | modify | delete | rename | overflow, path, from?, directory }. Leave the
   * loop to stop watching. A watch is not activity for idleTimeout.
   */
  watch(guestPath: string, opts: { recursive?: boolean } = {}): FsWatch {
    return this.agent().watch(guestPath, opts);
  }

  /** Creates a directory and its parents (mkdir -p) unless parents: false. */
  mkdir(guestPath: string, opts: { parents?: boolean; mode?: number } = {}): Promise<void> {
    return this.agent().mkdir(guestPath, { parents: true, ...opts });
  }

  remove(guestPath: string, opts: { recursive?: boolean } = {}): Promise<void> {
    return this.agent().remove(guestPath, opts);
  }

  rename(from: string, to: string): Promise<void> {
    return this.agent().rename(from, to);
  }

  /** Copies a host file or directory tree into the guest; resolves with the bytes copied. */
  async copyIn(hostPath: string, guestPath: string): Promise<number> {
    const st = await lstat(hostPath);
    if (st.isDirectory()) {
      await this.mkdir(guestPath, { mode: st.mode & 0o7777 });
      let total = 0;
      for (const name of await readdir(hostPath)) total += await this.copyIn(path.join(hostPath, name), path.posix.join(guestPath, name));
      return total;
    }
    if (!st.isFile()) throw new InvalidArgumentError(`copyIn copies files and directories; ${hostPath} is neither`);
    this.agent(); // a stopped sandbox fails here, before a file is opened
    const source = createReadStream(hostPath);
    try {
      return await this.write(guestPath, source, { mode: st.mode & 0o777 });
    } finally {
      source.destroy();
    }
  }

  /** Copies a guest file or directory tree to the host; resolves with the bytes copied. */
  async copyOut(guestPath: string, hostPath: string): Promise<number> {
    const st = await this.stat(guestPath);
    if (st.type === "directory") {
      await mkdir(hostPath, { recursive: true });
      let total = 0;
      for (const entry of await this.list(guestPath)) {
        if (entry.name === "" || entry.name === "." || entry.name === ".." || entry.name.includes("/") || entry.name.includes("\0")) {
          throw new AgentProtocolError(`the guest listed an entry named ${JSON.stringify(entry.name)} in ${guestPath}; refusing to copy it`);
        }
        if (entry.type !== "directory" && entry.type !== "regular") continue; // no links or devices on the host
        total += await this.copyOut(path.posix.join(guestPath, entry.name), path.join(hostPath, entry.name));
      }
      return total;
    }
    if (st.type !== "regular") throw new InvalidArgumentError(`copyOut copies files and directories; ${guestPath} is a ${st.type}`);
    let total = 0;
    const counted = async function* (chunks: AsyncIterable<Buffer>) {
      for await (const chunk of chunks) {
        total += chunk.length;
        yield chunk;
      }
    };
    // Permission bits only: a guest must not be able to plant setuid files on the host.
    await pipeline(counted(this.readStream(guestPath)), createWriteStream(hostPath, { mode: st.mode & 0o777 }));
    return total;
  }
}
