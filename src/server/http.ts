// The HTTP plumbing the server's protocols share: bodies read within a limit, JSON answers, and
// errors that carry their status (and a Retry-After when the server is full).
import type { IncomingMessage, ServerResponse } from "node:http";

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

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}
