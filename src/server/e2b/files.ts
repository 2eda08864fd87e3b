// envd's plain-HTTP file transfer: GET /files?path= downloads, POST uploads (multipart field
// "file", or the raw body), for a data-plane request's sandbox or for the holder of a presigned
// URL (downloadUrl / uploadUrl).
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

import { InvalidArgumentError } from "../../errors.js";
import type { Sandbox } from "../../sandbox/sandbox.js";
import { ForbiddenError, NotFoundError } from "../errors.js";
import { readBody, sendJson } from "../http.js";
import type { E2bSandboxes } from "./shared.js";

/** Serves GET (download) and POST (upload) /files for `sb`; uploads are limited to `fileLimit` bytes. */
export async function serveFiles(sb: Sandbox, req: IncomingMessage, res: ServerResponse, url: URL, fileLimit: number): Promise<void> {
  const path = url.searchParams.get("path") ?? "";
  if (!path.startsWith("/")) throw new InvalidArgumentError(`path ${JSON.stringify(path)} must be an absolute guest path`);
  if (path.split("/").includes("..")) throw new InvalidArgumentError(`path ${JSON.stringify(path)} may not contain ".."`);
  if (req.method === "GET") {
    // Streamed under the guest's credit, whatever the file's size: a slow client holds the read
    // back, not host memory.
    const st = await sb.fs.stat(path);
    if (st.type === "directory") throw new InvalidArgumentError(`${path} is a directory: download a file`);
    res.writeHead(200, { "content-type": "application/octet-stream" });
    return await pipeline(Readable.from(sb.fs.readStream(path)), res);
  }
  if (req.method !== "POST") throw new NotFoundError(`${req.method} /files is not served: GET downloads, POST uploads`);
  const type = String(req.headers["content-type"] ?? "");
  const body = await readBody(req, fileLimit);
  let data: Buffer;
  if (type.startsWith("multipart/form-data")) {
    const form = await new Request("http://x/", { method: "POST", headers: { "content-type": type }, body }).formData();
    const file = form.get("file");
    if (!file || typeof file === "string") throw new InvalidArgumentError('a multipart upload needs a "file" field');
    data = Buffer.from(await file.arrayBuffer());
  } else {
    data = body;
  }
  await sb.fs.write(path, data);
  sendJson(res, 200, [{ name: path.split("/").pop(), type: "file", path }]);
}

/**
 * Serves a presigned file URL: no sandbox header, but a signature only the holder of a sandbox's
 * token can make, over the path, the operation, the user and the expiry. The sandbox is the one
 * whose token makes it.
 */
export async function servePresigned(sandboxes: E2bSandboxes, req: IncomingMessage, res: ServerResponse, fileLimit: number): Promise<void> {
  const url = new URL(req.url ?? "/", "http://x");
  const path = url.searchParams.get("path") ?? "";
  const signature = Buffer.from(url.searchParams.get("signature") ?? "");
  const expiration = url.searchParams.get("signature_expiration");
  const operation = req.method === "GET" ? "read" : "write";
  const user = url.searchParams.get("username") ?? "";
  if (expiration !== null && !(Number(expiration) * 1000 > Date.now())) throw new ForbiddenError("the signed URL has expired: ask the sandbox for a new one");
  const raw = (token: string) => `${path}:${operation}:${user}:${token}${expiration !== null ? `:${expiration}` : ""}`;
  const sign = (token: string) => Buffer.from(`v1_${createHash("sha256").update(raw(token)).digest("base64").replace(/=+$/, "")}`);
  const found = sandboxes.everyone().find(({ s }) => {
    const want = s.paused ? undefined : sign(s.token);
    return want !== undefined && want.length === signature.length && timingSafeEqual(want, signature);
  });
  if (!found) throw new ForbiddenError("the signature matches no running sandbox for this path and operation");
  return serveFiles(found.m.sandbox, req, res, url, fileLimit);
}
