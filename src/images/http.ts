// The HTTP under RegistryClient and its token fetching: redirects followed by hand, retries with
// backoff for failures that may pass, bodies read under a cap, and the registry's own error text.
import type { ReadableStreamReadResult } from "node:stream/web";
import { debuglog } from "node:util";

import { MicrosandboxError, RegistryError } from "../errors.js";

const debug = debuglog("microsandbox");

const MAX_REDIRECTS = 10;

/** Marks a failure worth another attempt: network errors, 5xx/429, truncated bodies. */
export class TransientError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** fetch() with redirects followed by hand: never https→http, and no Authorization to another origin. */
export async function follow(fetchFn: (input: URL, init: RequestInit) => Promise<Response>, url: string, headers: Record<string, string>): Promise<Response> {
  let current = new URL(url);
  const origin = current.origin;
  for (let hop = 0; ; hop++) {
    const sendHeaders = current.origin === origin ? headers : withoutAuthorization(headers);
    const res = await fetchFn(current, { headers: sendHeaders, redirect: "manual" });
    if (res.status < 300 || res.status >= 400 || res.status === 304 || !res.headers.get("location")) return res;
    await res.body?.cancel();
    if (hop >= MAX_REDIRECTS) throw new RegistryError(`${url}: more than ${MAX_REDIRECTS} redirects`, res.status);
    const next = new URL(res.headers.get("location")!, current);
    if (next.protocol !== "https:" && !(next.protocol === "http:" && current.protocol === "http:")) {
      throw new RegistryError(
        `${current.host} redirected ${current.href} to ${next.href}; refusing to leave HTTPS (or to follow a non-HTTP redirect)`,
        res.status,
      );
    }
    debug("registry: %s redirected to %s", current.href, next.href);
    current = next;
  }
}

function withoutAuthorization(headers: Record<string, string>): Record<string, string> {
  const { authorization: _dropped, ...rest } = headers;
  return rest;
}

export interface RetryPolicy {
  retries: number;
  retryDelay: number;
  /** The registry the attempts talk to, and whether it is marked insecure: for the hint on a TLS failure. */
  registry: string;
  insecure: boolean;
}

/** Runs `attempt` until it succeeds, fails for good, or `retries` more attempts have failed. */
export async function retrying<T>(what: string, attempt: () => Promise<T>, policy: RetryPolicy): Promise<T> {
  const { retries, retryDelay, registry } = policy;
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (err) {
      if (err instanceof MicrosandboxError) throw err;
      const tls = tlsProblem(err);
      if (tls !== undefined) {
        const hint = policy.insecure
          ? ""
          : `. If ${registry} serves plain HTTP, mark it insecure: the sandbox option registry: { insecure: [${JSON.stringify(registry)}] } ` +
            "(msb pull and msb run: --insecure; a RegistryClient of your own: its insecure option)";
        throw new RegistryError(`could not speak HTTPS to ${registry} for ${what}: ${tls}${hint}`, undefined, { cause: err });
      }
      const status = err instanceof TransientError ? err.status : undefined;
      if (n >= retries) {
        throw new RegistryError(
          `${what} failed after ${n + 1} attempt${n ? "s" : ""}: ${describe(err)}. Check the network and the registry, or raise the retries option`,
          status,
          { cause: err },
        );
      }
      const delay = retryDelay * 2 ** n * (0.5 + Math.random() / 2);
      debug("registry: %s failed (%s); attempt %d of %d in %d ms", what, describe(err), n + 2, retries + 1, Math.round(delay));
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** The body's chunks; a broken connection surfaces as a TransientError. */
export async function* bodyChunks(res: Response, what: string): AsyncGenerator<Uint8Array> {
  if (!res.body) return;
  const reader = res.body.getReader();
  try {
    for (;;) {
      let step: ReadableStreamReadResult<Uint8Array>;
      try {
        step = await reader.read();
      } catch (err) {
        throw new TransientError(`the connection broke while reading ${what}`, undefined, { cause: err });
      }
      if (step.done) return;
      yield step.value;
    }
  } finally {
    reader.releaseLock();
    await res.body.cancel().catch(() => {});
  }
}

export async function readCapped(res: Response, cap: number, what: string): Promise<Buffer> {
  const length = Number(res.headers.get("content-length") ?? NaN);
  if (length > cap) {
    await res.body?.cancel();
    throw new RegistryError(`${what} is ${length} bytes, over the ${cap}-byte limit`, res.status);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of bodyChunks(res, what)) {
    total += chunk.length;
    if (total > cap) throw new RegistryError(`${what} is over the ${cap}-byte limit`, res.status);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** The registry's JSON error ("MANIFEST_UNKNOWN: manifest unknown") as a suffix, or "". */
export async function errorDetail(res: Response): Promise<string> {
  try {
    const text = (await readCapped(res, 64 * 1024, "error body")).toString("utf8");
    const errors = (JSON.parse(text) as { errors?: { code?: string; message?: string }[] }).errors;
    const first = errors?.[0];
    if (first) return ` (${[first.code, first.message].filter(Boolean).join(": ")})`;
  } catch {
    // Not JSON, or gone: the status says enough.
  }
  return "";
}

/** The TLS failure behind a fetch error (e.g. "wrong version number" from a plain HTTP port), if it was one. */
function tlsProblem(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined, i = 0; e && i < 5; e = e.cause as typeof e, i++) {
    if (typeof e.code === "string" && /^(ERR_SSL_|ERR_TLS_|EPROTO$|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_)/.test(e.code)) {
      const reason =
        typeof e.message === "string"
          ? e.message
              .split("\n")[0]!
              .replace(/^[0-9A-F]+:error:[0-9A-F]+:/, "")
              .replace(/:[^:\s]*\.c:\d+:?$/, "")
          : "";
      return reason ? `${e.code} (${reason})` : e.code;
    }
  }
  return undefined;
}

/** An error and its causes in one line, each message once. */
export function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e = err as { message?: unknown; code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    const text = typeof e.message === "string" ? e.message : String(e);
    if (parts.some((p) => p.includes(text))) continue;
    parts.push(typeof e.code === "string" && !text.includes(e.code) ? `${text} [${e.code}]` : text);
  }
  return parts.join(": ");
}
