// API keys: compared in constant time (digests of equal length, timingSafeEqual), each its own
// namespace of sandboxes. Without keys (a server on loopback only) everyone is one namespace.
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

import { UnauthorizedError } from "./errors.js";

const digest = (key: string) => createHash("sha256").update(key).digest();

export class Keys {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.map(digest);
  }

  get required(): boolean {
    return this.digests.length > 0;
  }

  /**
   * The caller's owner id (a key's digest prefix; "anonymous" without keys) from the key in
   * `header`, or UnauthorizedError.
   */
  owner(req: IncomingMessage, headers: readonly string[]): string {
    if (!this.required) return "anonymous";
    let key: string | undefined;
    for (const h of headers) {
      const v = req.headers[h];
      if (typeof v === "string" && v) key = v.replace(/^Bearer\s+/i, "");
      if (key) break;
    }
    if (!key) throw new UnauthorizedError(`no API key: send it in ${headers.join(" or ")}`);
    const d = digest(key);
    // Every key is compared, so the time taken says nothing about which came close.
    let match = -1;
    this.digests.forEach((k, i) => {
      if (timingSafeEqual(k, d) && match < 0) match = i;
    });
    if (match < 0) throw new UnauthorizedError("the API key is not valid: send one the server was started with (msb server --api-key)");
    return d.subarray(0, 6).toString("hex");
  }
}
