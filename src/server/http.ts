// The HTTP plumbing the server's protocols share: bodies read within a limit, JSON answers, and
// errors that carry their status (and a Retry-After when the server is full).
import type { IncomingMessage, ServerResponse } from "node:http";

/** A route's path parameters (find-my-way's :names). */
export type Params = Record<string, string | undefined>;
export type Handler = (req: IncomingMessage, res: ServerResponse, params: Params) => Promise<void> | void;

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code = String(status),
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/** The whole request body, or HttpError 413 past `limit` bytes (the rest is not read). */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw new HttpError(413, `request body of ${declared} bytes is over the ${limit}-byte limit`);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, `request body is over the ${limit}-byte limit`);
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}

/** The body as a JSON object ({} when empty), or HttpError 400. */
export async function readJsonObject(req: IncomingMessage, limit: number): Promise<Record<string, unknown>> {
  const body = await readBody(req, limit);
  if (!body.length) return {};
  try {
    const v: unknown = JSON.parse(body.toString("utf8"));
    if (v && typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // answered below
  }
  throw new HttpError(400, "the body is not a JSON object", "bad_request");
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}
