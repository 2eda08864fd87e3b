// The HTTP plumbing the server's protocols share: bodies read within a limit, JSON answers, and
// errors answered by the server's one table (errors.ts).
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../errors.js";
import { answerHeaders, answerOf, BodyTooLargeError, messageOf } from "./errors.js";

/** A route's path parameters (find-my-way's :names). */
export type Params = Record<string, string | undefined>;
export type Handler = (req: IncomingMessage, res: ServerResponse, params: Params) => Promise<void> | void;

/** The whole request body, or BodyTooLargeError past `limit` bytes (the rest is not read). */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw new BodyTooLargeError(`request body of ${declared} bytes is over the ${limit}-byte limit`);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new BodyTooLargeError(`request body is over the ${limit}-byte limit`);
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}

/** The body as a JSON object ({} when empty), or InvalidArgumentError. */
export async function readJsonObject(req: IncomingMessage, limit: number): Promise<Record<string, unknown>> {
  const body = await readBody(req, limit);
  if (!body.length) return {};
  try {
    const v: unknown = JSON.parse(body.toString("utf8"));
    if (v && typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // answered below
  }
  throw new InvalidArgumentError("the body is not a JSON object: send one, such as {}");
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Answers `err` as {code: status, message} (E2B's error body), or cuts the response off if it had begun. */
export function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) return void res.destroy();
  const a = answerOf(err);
  sendJson(res, a.status, { code: a.status, message: messageOf(err) }, answerHeaders(a));
}
