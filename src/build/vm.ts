// The microVM a build's steps run in: a sandbox booted from the build's current image (no memory
// snapshot: each image is booted once), running RUN as the image config says and taking COPY's
// files through the guest's tar, then giving its changes back as a layer (layer.ts).
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";

import type { AgentClient } from "../agent-client/client.js";
import type { ExitStatus, OutputChunk } from "../agent-client/process.js";
import type { ImageConfig, ImageStore, ResolvedImage } from "../images/store.js";
import { fileToGuest } from "../sandbox/guest-io.js";
import { CustomSandbox } from "../sandbox/kinds.js";
import { envRecord, guestEnv } from "../sandbox/options.js";
import type { NetworkPolicy } from "../vm/netpolicy.js";
import { copyTar, type SourceEntry } from "./copy.js";
import { archiveChanges } from "./layer.js";

class BuildSandbox extends CustomSandbox {
  constructor(
    private readonly image: ResolvedImage,
    private readonly store: ImageStore,
    opts: { memory: number; cpus: number; network: NetworkPolicy },
  ) {
    super({ image: image.ref, snapshot: false, ...opts });
  }

  protected override async bootImage(): Promise<{ store: ImageStore; image: ResolvedImage }> {
    return { store: this.store, image: this.image };
  }
}

/** The absolute guest path `p` names from the workdir. */
export const guestPath = (p: string, workdir = "/") => path.posix.resolve(workdir, p);

// "name[:group]" of /etc/passwd and /etc/group, or ids; as Docker's --chown, a user without a
// group gets the gid equal to its uid.
function parseIds(spec: string, passwd: string, group: string): { uid: number; gid: number } | string {
  const [u, g] = spec.split(":") as [string, string | undefined];
  const find = (table: string, name: string) =>
    table
      .split("\n")
      .find((l) => l.split(":")[0] === name)
      ?.split(":")[2];
  const uidText = /^\d+$/.test(u) ? u : find(passwd, u);
  if (uidText === undefined) return `no user ${JSON.stringify(u)} in the image's /etc/passwd`;
  const gidText = g === undefined ? uidText : /^\d+$/.test(g) ? g : find(group, g);
  if (gidText === undefined) return `no group ${JSON.stringify(g)} in the image's /etc/group`;
  return { uid: Number(uidText), gid: Number(gidText) };
}

export class BuildVm {
  private constructor(
    private readonly sandbox: BuildSandbox,
    /** The root the VM booted (what its changes are over). */
    readonly baseRoot: string,
    private readonly memory: number,
  ) {}

  static async boot(image: ResolvedImage, store: ImageStore, opts: { memory: number; cpus: number; network: NetworkPolicy }): Promise<BuildVm> {
    const sandbox = new BuildSandbox(image, store, opts);
    await sandbox.start();
    return new BuildVm(sandbox, image.rootfs, opts.memory);
  }

  private get agent(): AgentClient {
    return this.sandbox.agent();
  }

  /** Runs `/bin/sh -c command` as the config's user, in its workdir (made if missing), with its env over `buildArgs`. */
  async run(
    command: string,
    config: ImageConfig,
    buildArgs: Record<string, string>,
    onOutput: (c: OutputChunk) => void,
    signal?: AbortSignal,
  ): Promise<ExitStatus> {
    const cwd = config.workingDir ?? "/";
    await this.agent.mkdir(cwd, { parents: true });
    const [user, group] = (config.user ?? "").split(":");
    const proc = this.agent.spawn(["/bin/sh", "-c", command], {
      env: guestEnv(buildArgs, envRecord(config.env)),
      cwd,
      ...(user ? { user } : {}),
      ...(group && /^\d+$/.test(group) ? { gid: Number(group) } : {}),
      ...(signal ? { signal } : {}),
    });
    for await (const c of proc) onOutput(c);
    return proc.exit;
  }

  /**
   * Puts a source's entries at `dest` (resolved from the workdir): a directory's contents into
   * it, a file to it or, when dest ends with "/" or is a directory, into it. Returns an error
   * message, or undefined.
   */
  async copy(
    entries: SourceEntry[],
    src: string,
    c: { dest: string; user?: string; mode?: number },
    config: ImageConfig,
    tmpDir: string,
    signal?: AbortSignal,
  ): Promise<string | undefined> {
    const dest = guestPath(c.dest, config.workingDir);
    const isDir = !(entries.length === 1 && entries[0]!.rel === "");
    const destIsDir =
      c.dest.endsWith("/") ||
      (await this.agent.stat(dest).then(
        (s) => s.type === "directory",
        () => false,
      ));
    const target = !isDir && destIsDir ? path.posix.join(dest, path.basename(src)) : dest;
    let owner = { uid: 0, gid: 0 };
    if (c.user !== undefined) {
      const read = (f: string) => this.agent.readFile(f).then(String, () => "");
      const ids = parseIds(c.user, await read("/etc/passwd"), await read("/etc/group"));
      if (typeof ids === "string") return ids;
      owner = ids;
    }
    const exists = await this.agent.stat(target).then(
      () => true,
      () => false,
    );
    const dir = await mkdtemp(path.join(tmpDir, ".copy-"));
    try {
      const file = path.join(dir, "copy.tar");
      await copyTar(entries, target, { ...owner, ...(c.mode !== undefined ? { mode: c.mode } : {}) }, isDir && !exists, file);
      await fileToGuest(this.agent, ["tar", "-C", "/", "-xf", "-"], file, signal);
    } catch (err) {
      return `the guest's tar could not take the files: ${(err as Error).message}`;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return undefined;
  }

  /** The VM's changes since boot as a layer blob in `blobDir`. The guest holds them in its memory: that bounds the archive. */
  archive(blobDir: string, signal?: AbortSignal): Promise<{ digest: string; size: number }> {
    return archiveChanges(this.agent, this.baseRoot, blobDir, this.memory * 2 * 1024 * 1024, signal);
  }

  async stop(): Promise<void> {
    await this.sandbox.stop();
  }
}
