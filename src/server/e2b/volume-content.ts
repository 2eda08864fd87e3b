// The E2B volume content API (/volumecontent/ID/{dir,path,file}, at E2B_VOLUME_API_URL, with the
// volume's token as Bearer): a volume's files, reached by mounting it at /volume in a helper
// sandbox of the default template's image. Calls on one volume share one helper, booted for the
// first and stopped after the last; the helper holds the volume's lease, so a volume a sandbox
// has mounted answers 409 (one writer at a time), as does destroying it meanwhile.
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

import type { FileStat } from "../../agent-client/client.js";
import { InvalidArgumentError, VolumeBusyError } from "../../errors.js";
import type { Sandbox } from "../../sandbox/sandbox.js";
import type { ImageCatalog } from "../catalog.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { BodyTooLargeError, ConflictError, NotFoundError, UnauthorizedError } from "../errors.js";
import { type Handler, type Params, readJsonObject, sendJson } from "../http.js";
import type { Managed, SandboxTable } from "../sandboxes.js";
import { type E2bVolume, type E2bVolumes, ownerOf } from "./volumes.js";

const MOUNT = "/volume";
const HELPER_MEMORY_MIB = 128;
/** Entries one listing answers, whatever its depth (it is built in the server's memory). */
const MAX_LISTED = 100_000;

/** A path in the volume ("/a/b", "a/b"): its parts, none of them "." or "..". */
function partsOf(path: string | null): string[] {
  if (path === null) throw new InvalidArgumentError("path is missing: give the path in the volume, such as /data/a.txt");
  const parts = path.split("/").filter(Boolean);
  if (path.includes("\0") || parts.some((p) => p === "." || p === ".."))
    throw new InvalidArgumentError(`path ${JSON.stringify(path)} may not contain ".", ".." or NUL`);
  return parts;
}

/** An E2B VolumeEntryStat; the agent's stat has one time, so atime and ctime are its mtime. */
function statOf(st: FileStat, parts: string[]) {
  const mtime = st.mtime.toISOString();
  return {
    name: parts.at(-1) ?? "",
    path: `/${parts.join("/")}`,
    type: st.type === "regular" ? "file" : st.type === "directory" || st.type === "symlink" ? st.type : "unknown",
    size: st.size,
    mode: st.mode,
    uid: st.uid,
    gid: st.gid,
    atime: mtime,
    mtime,
    ctime: mtime,
    ...(st.linkTarget ? { target: st.linkTarget } : {}),
  };
}

/** A whole-number query parameter or body field, if given. */
function numberOf(value: unknown, what: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || (typeof value === "string" && !/^\d+$/.test(value)))
    throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is invalid: give a whole number`);
  return n;
}

export function volumeContent(volumes: E2bVolumes, table: SandboxTable, catalog: ImageCatalog, bodyLimit: number, fileLimit: number) {
  const helpers = new Map<string, { helper: Promise<Managed>; users: number }>();

  // Boots the volume's helper (after the last one has stopped), or joins the one running.
  async function withVolume<T>(v: E2bVolume, fn: (sb: Sandbox) => Promise<T>): Promise<T> {
    let h = helpers.get(v.library);
    if (!h) {
      const { image } = catalog.template(SERVER_DEFAULTS.e2b.template);
      const boot = volumes.settled(v.library).then(() =>
        table.create({
          protocol: "e2b",
          owner: ownerOf(v),
          namespace: "e2b-volume",
          name: v.name,
          image,
          kind: "CustomSandbox",
          template: image,
          memory: HELPER_MEMORY_MIB,
          volumes: [{ name: v.library, path: MOUNT }],
        }),
      );
      h = { helper: boot, users: 0 };
      helpers.set(v.library, h);
    }
    h.users++;
    try {
      const m = await h.helper.catch((err: unknown) => {
        if (err instanceof VolumeBusyError)
          // Which sandbox is not said: a volume's token is no key to its owner's sandboxes.
          throw new VolumeBusyError(`volume ${v.name} is mounted in a sandbox: reach its files there, or kill the sandbox first`);
        throw err;
      });
      return await fn(m.sandbox);
    } finally {
      if (--h.users === 0) {
        helpers.delete(v.library);
        const stop = h.helper.then(
          (m) => table.kill(m),
          () => {},
        );
        volumes.stopped(v.library, stop);
      }
    }
  }

  // The volume a request names, allowed by its token.
  function volumeOf(req: IncomingMessage, params: Params): E2bVolume {
    const v = volumes.all().find((x) => x.volumeID === params.volumeID);
    if (!v) throw new NotFoundError(`volume ${JSON.stringify(params.volumeID)} not found`);
    const given = Buffer.from(String(req.headers.authorization ?? "").replace(/^Bearer\s+/i, ""));
    const want = Buffer.from(volumes.token(v));
    if (given.length !== want.length || !timingSafeEqual(given, want))
      throw new UnauthorizedError("the volume's token is missing or wrong: send the token Volume.create or getInfo gave, as Authorization: Bearer");
    return v;
  }

  // One route: its volume, its query, and the helper sandbox with the volume at MOUNT.
  const route =
    (
      known: string[],
      fn: (sb: Sandbox, at: (parts: string[]) => string, q: URLSearchParams, req: IncomingMessage, res: ServerResponse) => Promise<void>,
    ): Handler =>
    async (req, res, params) => {
      const v = volumeOf(req, params);
      const q = new URL(req.url ?? "/", "http://x").searchParams;
      for (const k of q.keys()) if (!known.includes(k)) throw new InvalidArgumentError(`unknown query parameter ${k}: this route takes ${known.join(", ")}`);
      await withVolume(v, (sb) => fn(sb, (parts) => [MOUNT, ...parts].join("/"), q, req, res));
    };

  // chown and chmod, for what the agent's file calls do not set.
  async function setMeta(sb: Sandbox, path: string, meta: { uid?: number; gid?: number; mode?: number }): Promise<void> {
    const run = async (argv: string[]) => {
      const r = await sb.command.run(argv[0]!, argv.slice(1));
      if (r.exitCode !== 0) throw new InvalidArgumentError(`${argv.join(" ")} failed: ${r.stderr.trim()}`);
    };
    if (meta.uid !== undefined || meta.gid !== undefined) {
      const st = await sb.fs.stat(path);
      await run(["chown", "-h", `${meta.uid ?? st.uid}:${meta.gid ?? st.gid}`, path]);
    }
    if (meta.mode !== undefined) await run(["chmod", (meta.mode & 0o7777).toString(8), path]);
  }
  const metaOf = (src: { get(k: string): unknown }) => ({
    uid: numberOf(src.get("uid"), "uid"),
    gid: numberOf(src.get("gid"), "gid"),
    mode: numberOf(src.get("mode"), "mode"),
  });

  return function routes(on: (method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE", path: string, handler: Handler) => void): void {
    on(
      "GET",
      "/volumecontent/:volumeID/dir",
      route(["path", "depth"], async (sb, at, q, _req, res) => {
        const depth = numberOf(q.get("depth"), "depth") || 1;
        const out: ReturnType<typeof statOf>[] = [];
        const walk = async (parts: string[], level: number) => {
          for (const st of await sb.fs.list(at(parts))) {
            if (out.length === MAX_LISTED)
              throw new InvalidArgumentError(`the listing passed ${MAX_LISTED} entries: list a deeper path, or with a smaller depth`);
            out.push(statOf(st, [...parts, st.name]));
            if (st.type === "directory" && level < depth) await walk([...parts, st.name], level + 1);
          }
        };
        await walk(partsOf(q.get("path")), 1);
        sendJson(res, 200, out);
      }),
    );
    on(
      "POST",
      "/volumecontent/:volumeID/dir",
      route(["path", "uid", "gid", "mode", "force"], async (sb, at, q, _req, res) => {
        const parts = partsOf(q.get("path"));
        const force = q.get("force") === "true";
        const exists = await sb.fs.stat(at(parts)).then(
          () => true,
          () => false,
        );
        if (exists && !force) throw new ConflictError(`/${parts.join("/")} already exists in the volume`);
        // force: parents too, and an existing directory is no error (mkdir -p).
        if (!exists) await sb.fs.mkdir(at(parts), { parents: force });
        await setMeta(sb, at(parts), metaOf(q));
        sendJson(res, 201, statOf(await sb.fs.stat(at(parts)), parts));
      }),
    );
    on(
      "GET",
      "/volumecontent/:volumeID/path",
      route(["path"], async (sb, at, q, _req, res) => {
        const parts = partsOf(q.get("path"));
        sendJson(res, 200, statOf(await sb.fs.stat(at(parts)), parts));
      }),
    );
    on(
      "PATCH",
      "/volumecontent/:volumeID/path",
      route(["path"], async (sb, at, q, req, res) => {
        const parts = partsOf(q.get("path"));
        const body = await readJsonObject(req, bodyLimit);
        const { uid, gid, mode, ...rest } = body;
        if (Object.keys(rest).length) throw new InvalidArgumentError(`unknown metadata ${Object.keys(rest).join(", ")}: give uid, gid, mode`);
        await setMeta(sb, at(parts), metaOf({ get: (k) => body[k] }));
        sendJson(res, 200, statOf(await sb.fs.stat(at(parts)), parts));
      }),
    );
    on(
      "DELETE",
      "/volumecontent/:volumeID/path",
      route(["path"], async (sb, at, q, _req, res) => {
        const parts = partsOf(q.get("path"));
        if (!parts.length) throw new InvalidArgumentError("the volume's root cannot be removed: remove what is in it, or destroy the volume");
        await sb.fs.stat(at(parts)); // a missing path is 404, as E2B answers
        await sb.fs.remove(at(parts), { recursive: true });
        res.writeHead(204).end();
      }),
    );
    on(
      "GET",
      "/volumecontent/:volumeID/file",
      route(["path"], async (sb, at, q, _req, res) => {
        const path = at(partsOf(q.get("path")));
        if ((await sb.fs.stat(path)).type === "directory") throw new InvalidArgumentError(`${q.get("path")} is a directory: read a file`);
        res.writeHead(200, { "content-type": "application/octet-stream" });
        await pipeline(Readable.from(sb.fs.readStream(path)), res);
      }),
    );
    on(
      "PUT",
      "/volumecontent/:volumeID/file",
      // A file is overwritten whether or not force is given (Volume.writeFile's documented behaviour).
      route(["path", "uid", "gid", "mode", "force"], async (sb, at, q, req, res) => {
        const parts = partsOf(q.get("path"));
        if (!parts.length) throw new InvalidArgumentError("path is the volume's root: give a file's path");
        const meta = metaOf(q);
        let size = 0;
        const body = (async function* () {
          for await (const chunk of req as AsyncIterable<Buffer>) {
            size += chunk.length;
            if (size > fileLimit) throw new BodyTooLargeError(`the file is over the ${fileLimit}-byte upload limit`);
            yield chunk;
          }
        })();
        await sb.fs.write(at(parts), body, { parents: false });
        await setMeta(sb, at(parts), meta);
        sendJson(res, 200, statOf(await sb.fs.stat(at(parts)), parts));
      }),
    );
  };
}
