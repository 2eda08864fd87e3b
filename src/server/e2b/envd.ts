// E2B's envd, served by the host for every sandbox on one port: Connect RPC process.Process and
// filesystem.Filesystem (connect-node, with the services and messages generated from our own
// .proto in proto/e2b into src/gen/e2b), translated to the agent protocol. The sandbox is the
// request's E2b-Sandbox-Id, and its X-Access-Token must be the one its create returned.
import type { IncomingMessage, ServerResponse } from "node:http";

import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext, Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import type { FileStat } from "../../agent-client/client.js";
import { FileOperationError } from "../../errors.js";
import { type EntryInfoSchema, EventType, Filesystem, FileType, type WatchDirResponseSchema } from "../../gen/e2b/filesystem_pb.js";
import { Process, type ProcessEventSchema, type ProcessSelector, Signal } from "../../gen/e2b/process_pb.js";
import { connectErrorOf, NotFoundError } from "../errors.js";
import type { Managed } from "../sandboxes.js";
import type { ProcEvent, Tracked } from "./processes.js";
import type { E2bSandboxes } from "./shared.js";

const TYPES: Partial<Record<FileStat["type"], FileType>> = { regular: FileType.FILE, directory: FileType.DIRECTORY, symlink: FileType.SYMLINK };
const rwx = (mode: number, type: string) =>
  (type === "directory" ? "d" : type === "symlink" ? "l" : "-") +
  [6, 3, 0].map((s) => ((mode >> s) & 4 ? "r" : "-") + ((mode >> s) & 2 ? "w" : "-") + ((mode >> s) & 1 ? "x" : "-")).join("");

function entry(st: FileStat, path: string): MessageInitShape<typeof EntryInfoSchema> {
  return {
    name: st.name,
    type: TYPES[st.type] ?? FileType.UNSPECIFIED,
    path,
    size: BigInt(st.size),
    mode: st.mode,
    permissions: rwx(st.mode, st.type),
    owner: st.uid === 0 ? "root" : String(st.uid),
    group: st.gid === 0 ? "root" : String(st.gid),
    modifiedTime: timestampFromDate(st.mtime),
    ...(st.linkTarget ? { symlinkTarget: st.linkTarget } : {}),
  };
}

function eventOf(e: ProcEvent): MessageInitShape<typeof ProcessEventSchema> {
  if (e.kind === "start") return { event: { case: "start", value: { pid: e.pid } } };
  if (e.kind === "data") return { event: { case: "data", value: { output: { case: e.stream, value: new Uint8Array(e.data) } } } };
  const exit = e.exit;
  const code = exit?.exitCode ?? -1;
  const status = exit?.signal ? `signal: ${exit.signal.slice(3).toLowerCase()}` : exit ? `exit status ${code}` : "error";
  return { event: { case: "end", value: { exitCode: code, exited: !!exit && exit.exitCode !== null, status, ...(e.error ? { error: e.error } : {}) } } };
}

// The guest's watch events as envd's.
const EVENTS = { create: EventType.CREATE, modify: EventType.WRITE, delete: EventType.REMOVE, rename: EventType.RENAME } as const;

const bash = new WeakMap<object, Promise<boolean>>();
const hasBash = (m: Managed) => {
  let known = bash.get(m.sandbox);
  if (!known) {
    known = m.sandbox.fs.stat("/bin/bash").then(
      () => true,
      () => false,
    );
    bash.set(m.sandbox, known);
  }
  return known;
};

// Every failure, thrown by a handler or while it streams, answered with the Connect code the
// server's one table gives it.
const answered: Interceptor = (next) => async (req) => {
  try {
    const res = await next(req);
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (err) {
          throw connectErrorOf(err);
        }
      })(),
    };
  } catch (err) {
    throw connectErrorOf(err);
  }
};

/** The node:http handler for envd's services, for the sandboxes the E2B API made. */
export function envdHandler(sandboxes: E2bSandboxes): (req: IncomingMessage, res: ServerResponse) => void {
  return connectNodeAdapter({ routes: envdRoutes(sandboxes), interceptors: [answered] });
}

function envdRoutes(sandboxes: E2bSandboxes) {
  const of = (ctx: HandlerContext) => sandboxes.forRequest(ctx.requestHeader);
  const fsOf = (ctx: HandlerContext) => of(ctx).m.sandbox.fs;
  const proc = (ctx: HandlerContext, selector: ProcessSelector["selector"] | undefined) => {
    const t = of(ctx).s.processes.find(selector ?? { case: undefined });
    if (!t) throw new NotFoundError(`process ${JSON.stringify(selector?.value ?? null)} not found: it ended, or was never started`);
    return t;
  };
  return (router: ConnectRouter) => {
    router.service(Process, {
      async *start(req, ctx) {
        const { m, s } = of(ctx);
        const cfg = req.process;
        const args = cfg?.args ?? [];
        const envs = cfg?.envs ?? {};
        const size = req.pty?.size;
        // The SDK runs every command with /bin/bash; an image without bash gets its sh.
        const cmd = cfg?.cmd === "/bin/bash" && !(await hasBash(m)) ? "/bin/sh" : (cfg?.cmd ?? "");
        const spawned = m.sandbox.command.spawn(cmd, args, {
          env: envs,
          ...(cfg?.cwd ? { cwd: cfg.cwd } : {}),
          ...(size ? { pty: { rows: size.rows || 24, cols: size.cols || 80 } } : { stdin: !!req.stdin }),
          keep: true, // a memory pause keeps it, as E2B's does
        });
        const t = await s.processes.add(spawned, {
          cmd: cfg?.cmd ?? "",
          args,
          envs,
          ...(cfg?.cwd ? { cwd: cfg.cwd } : {}),
          pty: !!size,
          ...(req.tag ? { tag: req.tag } : {}),
        });
        // The next server on this cache finds it by pid (an outliving sandbox's record).
        sandboxes.table.persist(m);
        for await (const e of t.watch()) yield { event: eventOf(e) };
      },
      async *connect(req, ctx) {
        for await (const e of proc(ctx, req.process?.selector).watch()) yield { event: eventOf(e) };
      },
      list(_req, ctx) {
        return {
          processes: of(ctx)
            .s.processes.list()
            .map((t) => ({
              pid: t.pid,
              ...(t.tag ? { tag: t.tag } : {}),
              config: { cmd: t.cmd, args: t.args, envs: t.envs, ...(t.cwd ? { cwd: t.cwd } : {}) },
            })),
        };
      },
      async sendInput(req, ctx) {
        const input = req.input?.input;
        if (input?.value) await proc(ctx, req.process?.selector).proc.write(input.value);
        return {};
      },
      async streamInput(reqs, ctx) {
        let t: Tracked | undefined;
        for await (const r of reqs) {
          if (r.event.case === "start") t = proc(ctx, r.event.value.process?.selector);
          else if (r.event.case === "data" && t && r.event.value.input?.input.value) await t.proc.write(r.event.value.input.input.value);
        }
        return {};
      },
      sendSignal(req, ctx) {
        proc(ctx, req.process?.selector).proc.kill(req.signal === Signal.SIGTERM ? "SIGTERM" : "SIGKILL");
        return {};
      },
      async closeStdin(req, ctx) {
        await proc(ctx, req.process?.selector).proc.end();
        return {};
      },
      update(req, ctx) {
        const size = req.pty?.size;
        if (size) proc(ctx, req.process?.selector).proc.resize(size.rows, size.cols);
        return {};
      },
    });
    router.service(Filesystem, {
      async stat(req, ctx) {
        return { entry: entry(await fsOf(ctx).stat(req.path), req.path) };
      },
      async makeDir(req, ctx) {
        const fs = fsOf(ctx);
        // envd answers AlreadyExists for any existing path, which mkdir -p would accept.
        if (
          await fs.stat(req.path).then(
            () => true,
            () => false,
          )
        )
          throw new FileOperationError(`${req.path} already exists`, 17, "EEXIST");
        await fs.mkdir(req.path, { parents: true });
        return { entry: entry(await fs.stat(req.path), req.path) };
      },
      async move(req, ctx) {
        const fs = fsOf(ctx);
        await fs.rename(req.source, req.destination);
        return { entry: entry(await fs.stat(req.destination), req.destination) };
      },
      async listDir(req, ctx) {
        const fs = fsOf(ctx);
        const depth = req.depth || 1;
        const entries: MessageInitShape<typeof EntryInfoSchema>[] = [];
        const walk = async (dir: string, level: number) => {
          for (const st of await fs.list(dir)) {
            const path = `${dir.replace(/\/$/, "")}/${st.name}`;
            entries.push(entry(st, path));
            if (st.type === "directory" && level < depth) await walk(path, level + 1);
          }
        };
        await walk(req.path, 1);
        return { entries };
      },
      async remove(req, ctx) {
        await fsOf(ctx).remove(req.path, { recursive: true });
        return {};
      },
      async *watchDir(req, ctx): AsyncGenerator<MessageInitShape<typeof WatchDirResponseSchema>> {
        const root = req.path.replace(/\/$/, "");
        const watch = fsOf(ctx).watch(root, { recursive: req.recursive });
        ctx.signal.addEventListener("abort", () => watch.close(), { once: true });
        yield { event: { case: "start", value: {} } };
        for await (const e of watch) {
          if (e.type === "overflow") continue; // envd has no such event: the client sees a gap
          yield { event: { case: "filesystem", value: { name: e.path.slice(root.length + 1), type: EVENTS[e.type] } } };
        }
      },
    });
  };
}
