// The HTTP plumbing the server's protocols share: bodies read within a limit, JSON answers, and
// errors answered by the server's one table (errors.ts).
import { type IncomingMessage, type ServerResponse, STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";

import { InvalidArgumentError } from "../errors.js";
import { SERVER_DEFAULTS } from "./defaults.js";
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

/** Answers `err` on a connection taken from the HTTP server (an Upgrade request's), then closes it. */
export function sendRawError(socket: Duplex, err: unknown): void {
  const a = answerOf(err);
  const body = JSON.stringify({ code: a.status, message: messageOf(err) });
  const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(body), connection: "close", ...answerHeaders(a) };
  const head = [`HTTP/1.1 ${a.status} ${STATUS_CODES[a.status] ?? ""}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
  closeGently(socket, `${head.join("\r\n")}\r\n\r\n${body}`);
}

/**
 * Ends a connection taken from the HTTP server, after `last`. What the client still sends is read
 * and dropped until it closes too: closing on unread bytes would reset the connection and could
 * lose what was just written. A client that never closes is cut off after a grace.
 */
export function closeGently(socket: Duplex, last?: string): void {
  socket.end(last);
  socket.resume();
  setTimeout(() => socket.destroy(), SERVER_DEFAULTS.closeGraceMs).unref();
}
