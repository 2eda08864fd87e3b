// The files of a template build's copy steps: the SDK asks for an upload link per files hash
// (GET /templates/:id/files/:hash), PUTs a tar (gzipped or not) of the matched files to it, and
// names the hash in the copy step it then sends. Each build's uploads are unpacked into a temp
// directory of its own, path-safely and within bounds (only files and directories; no entry
// above the upload's root; bytes and entries capped), and go with the build.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";

import { InvalidArgumentError, TarError } from "../../errors.js";
import { clean, Refusal } from "../../images/rootpath.js";
import { readTar } from "../../images/tar.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { BodyTooLargeError, ForbiddenError, NotFoundError } from "../errors.js";

/** What the SDK's files hash looks like (sha256, hex). */
export const FILES_HASH = /^[0-9a-f]{64}$/;
const TOKEN_HEADER = "x-msb-upload-token";

interface Upload {
  token: string;
  /** The upload under way. */
  receiving?: Promise<void>;
  /** Set once the tar arrived: its entries as the tar listed them (the order the SDK hashed them in). */
  entries?: { path: string; dir: boolean; mode: number; size: number }[];
}

/** One build's uploaded files, under a temp directory of its own. */
export class BuildFiles {
  private readonly uploads = new Map<string, Upload>();
  private dir: Promise<string> | undefined;
  private bytes = 0;
  private count = 0;

  constructor(private readonly limits: { compressed: number; unpacked: number }) {}

  /** The answer to the SDK's upload-link request for `hash`: where to PUT it (on this server), and the header that allows it. */
  link(req: IncomingMessage, templateID: string, hash: string) {
    if (!FILES_HASH.test(hash)) throw new InvalidArgumentError(`files hash ${JSON.stringify(hash)} is invalid: give the sha256 (hex) the SDK computed`);
    const up = this.uploads.get(hash) ?? { token: randomBytes(24).toString("base64url") };
    this.uploads.set(hash, up);
    const url = `http://${req.headers.host ?? "127.0.0.1"}/templates/${encodeURIComponent(templateID)}/files/${hash}`;
    // Once uploaded, a hash asked for again is there: the SDK skips the upload.
    return { present: up.entries !== undefined, ...(up.entries ? {} : { url, headers: { [TOKEN_HEADER]: up.token } }) };
  }

  /** Takes the PUT of `hash`'s tar: allowed by the token its link gave, unpacked into `hash`'s own directory. */
  async receive(req: IncomingMessage, hash: string): Promise<void> {
    const up = this.uploads.get(hash);
    if (!up) throw new NotFoundError(`no upload of files ${hash} was asked for in this build: ask for its link first`);
    const given = Buffer.from(String(req.headers[TOKEN_HEADER] ?? ""));
    const want = Buffer.from(up.token);
    if (given.length !== want.length || !timingSafeEqual(given, want))
      throw new ForbiddenError(`the upload of files ${hash} lacks the ${TOKEN_HEADER} header its link gave`);
    // The same files again (two copies of one source): the first upload's are theirs.
    if (up.entries || up.receiving) {
      req.resume();
      return up.receiving;
    }
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > this.limits.compressed) throw new BodyTooLargeError(`files upload of ${declared} bytes is over the ${this.limits.compressed}-byte limit`);
    up.receiving = (async () => {
      const root = path.join(await this.root(), hash);
      await mkdir(root);
      up.entries = await this.unpack(req, root).catch(async (err) => {
        await rm(root, { recursive: true, force: true });
        throw err;
      });
    })().finally(() => delete up.receiving);
    return up.receiving;
  }

  /**
   * The host path of the copy step's source `src` among `hash`'s files, after checking the upload
   * is what the SDK hashed as `COPY src dest` (where it can tell: a directory's size in the SDK's
   * hash is its own file system's, so an upload with directories is taken as uploaded).
   */
  async source(hash: string, src: string, dest: string): Promise<string> {
    const up = this.uploads.get(hash);
    if (!up?.entries) throw new InvalidArgumentError(`copy ${JSON.stringify(src)}: its files (hash ${hash}) were not uploaded to this build`);
    if (/[*?[\]{}]/.test(src)) throw new InvalidArgumentError(`copy ${JSON.stringify(src)}: glob patterns are not served here; copy a file or a directory`);
    let rel: string;
    try {
      rel = clean(src);
    } catch {
      throw new InvalidArgumentError(`copy ${JSON.stringify(src)}: the source leaves the build context`);
    }
    const root = path.join(await this.root(), hash);
    if (!up.entries.some((e) => e.dir)) {
      const h = createHash("sha256").update(`COPY ${src} ${dest}`);
      for (const e of up.entries) {
        h.update(e.path)
          .update(String(0o100000 | e.mode))
          .update(String(e.size));
        for await (const chunk of createReadStream(path.join(root, e.path))) h.update(chunk as Buffer);
      }
      if (h.digest("hex") !== hash) throw new InvalidArgumentError(`copy ${JSON.stringify(src)}: the uploaded files do not match their hash ${hash}`);
    }
    if (rel !== "" && !up.entries.some((e) => e.path === rel || e.path.startsWith(`${rel}/`)))
      throw new InvalidArgumentError(`copy ${JSON.stringify(src)}: the upload of hash ${hash} holds no such path`);
    return rel ? path.join(root, rel) : root;
  }

  /** Removes the uploaded files. */
  async discard(): Promise<void> {
    const dir = this.dir;
    this.dir = undefined;
    if (dir) await rm(await dir, { recursive: true, force: true });
  }

  private root(): Promise<string> {
    this.dir ??= mkdtemp(path.join(os.tmpdir(), "msb-e2b-template-"));
    return this.dir;
  }

  private async unpack(req: IncomingMessage, root: string): Promise<NonNullable<Upload["entries"]>> {
    const entries: NonNullable<Upload["entries"]> = [];
    try {
      for await (const e of readTar(await gunzipped(bounded(req, this.limits.compressed)), { maxEntrySize: this.limits.unpacked })) {
        let rel: string;
        try {
          rel = clean(e.path);
        } catch (err) {
          if (err instanceof Refusal) throw new InvalidArgumentError(`files upload entry ${JSON.stringify(e.path)} leaves the upload's root`);
          throw err;
        }
        if (++this.count > SERVER_DEFAULTS.e2b.templateFileCount)
          throw new InvalidArgumentError(`a build's uploads hold more than ${SERVER_DEFAULTS.e2b.templateFileCount} entries: copy fewer files`);
        if (e.type === "dir") {
          if (rel) await mkdir(path.join(root, rel), { recursive: true });
          entries.push({ path: rel, dir: true, mode: e.mode, size: 0 });
          continue;
        }
        if (e.type !== "file" || !rel)
          throw new InvalidArgumentError(
            `files upload entry ${JSON.stringify(e.path)} is a ${e.type}: only files and directories are taken (copy with resolveSymlinks: true to send a link's target)`,
          );
        this.bytes += e.size;
        if (this.bytes > this.limits.unpacked) throw new BodyTooLargeError(`a build's uploads unpack to more than ${this.limits.unpacked} bytes`);
        const file = path.join(root, rel);
        await mkdir(path.dirname(file), { recursive: true });
        // A path named twice is written again: no entry is a link, so no write goes through one.
        await rm(file, { recursive: true, force: true });
        await pipeline(Readable.from(e.body()), createWriteStream(file, { mode: 0o600 }));
        // Readable by the server whatever the mode, so it can hash and copy the file.
        await chmod(file, e.mode | 0o400);
        entries.push({ path: rel, dir: false, mode: e.mode, size: e.size });
      }
    } catch (err) {
      if (err instanceof TarError) throw new InvalidArgumentError(`the files upload is not a tar archive: ${err.message}`);
      throw err;
    } finally {
      req.resume(); // what is left after the archive's end is read and dropped
    }
    return entries;
  }
}

// The request body, cut off with BodyTooLargeError past `limit` bytes.
async function* bounded(req: IncomingMessage, limit: number): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > limit) throw new BodyTooLargeError(`files upload is over the ${limit}-byte limit`);
    yield chunk as Buffer;
  }
}

// The bytes as a tar: gunzipped when they start with gzip's magic bytes (the SDK's default), else as they are.
async function gunzipped(source: AsyncGenerator<Buffer>): Promise<AsyncIterable<Uint8Array>> {
  let head = Buffer.alloc(0);
  let ended = false;
  while (head.length < 2 && !ended) {
    const r = await source.next();
    if (r.done) ended = true;
    else head = Buffer.concat([head, r.value]);
  }
  const whole = Readable.from(
    (async function* () {
      if (head.length) yield head;
      if (!ended) yield* source;
    })(),
  );
  if (head[0] !== 0x1f || head[1] !== 0x8b) return whole;
  const gunzip = createGunzip();
  whole.on("error", (err) => gunzip.destroy(err));
  return whole.pipe(gunzip);
}

/** The bounds of one build's uploads from the server's options. */
export const uploadLimits = (fileLimit: number) => ({ compressed: fileLimit, unpacked: SERVER_DEFAULTS.e2b.templateFilesLimit });
