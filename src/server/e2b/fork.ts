// POST /sandboxes/:id/fork: `count` copies of a running sandbox (the library's fork(): memory,
// processes, files; a PythonSandbox's interpreter state too), each a sandbox of the caller's own
// with its own access token and timeout, within the server's limits. Each fork succeeds or fails
// on its own: the answer has one entry per fork, the sandbox or the error that kept it from running.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../../errors.js";
import { checkKeys } from "../../keys.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { answerOf, ConflictError, messageOf } from "../errors.js";
import { type Params, readJsonObject, sendJson } from "../http.js";
import { recordE2b } from "./adoption.js";
import { contextRecords, linkContexts } from "./interpreter.js";
import { armLifecycle } from "./pausing.js";
import { type E2bSandbox, type E2bSandboxes, settled } from "./shared.js";

const FORK_KEYS = ["count", "timeout"] as const;
/** Forks one request may ask for. */
const MAX_FORKS = 100;

/** The fork route's handler; `reached` is what a create answers for a sandbox (how the SDK reaches it). */
export function forkRoute(sandboxes: E2bSandboxes, bodyLimit: number, reached: (sb: E2bSandbox) => unknown) {
  return async function fork(req: IncomingMessage, res: ServerResponse, params: Params): Promise<void> {
    const parent = sandboxes.owned(req, params.sandboxID ?? "");
    const body = await readJsonObject(req, bodyLimit);
    checkKeys("fork option", body, FORK_KEYS);
    const count = body.count ?? 1;
    if (!(typeof count === "number" && Number.isInteger(count) && count >= 1 && count <= MAX_FORKS))
      throw new InvalidArgumentError(`count ${JSON.stringify(body.count)} is invalid: give a whole number of forks from 1 to ${MAX_FORKS}`);
    const timeout = body.timeout ?? SERVER_DEFAULTS.e2b.timeoutS;
    if (!(typeof timeout === "number" && timeout > 0))
      throw new InvalidArgumentError(`timeout ${JSON.stringify(body.timeout)} is invalid: give a positive number of seconds`);
    await settled(parent.s);
    if (parent.s.paused) throw new ConflictError(`sandbox ${parent.m.id} is paused: connect to it first, then fork it`);
    const { m } = parent;
    const results: unknown[] = [];
    let left = false;
    res.once("close", () => (left = !res.writableFinished));
    // One after another: each copy pauses the parent for an instant, and the library takes them in turn anyway.
    for (let i = 0; i < count; i++) {
      // A client that left reads no answer: the forks it asked for and would not know of are not made.
      if (left) break;
      try {
        const child = await sandboxes.table.create({
          protocol: "e2b",
          owner: m.owner,
          namespace: m.namespace,
          name: m.name,
          kind: m.kind,
          memory: m.memory,
          template: m.template,
          metadata: { ...m.metadata },
          timeout,
          start: (name) => m.sandbox.fork({ name }),
        });
        // The library's fork keeps the network policy; so does the E2B record of it.
        const s = sandboxes.add(child, randomBytes(24).toString("base64url"), structuredClone(parent.s.network), { ...parent.s.lifecycle, timeoutS: timeout });
        linkContexts(s, child.sandbox, contextRecords(parent.s)); // the fork's interpreters are copies of the parent's
        armLifecycle(sandboxes.table, { m: child, s });
        recordE2b(sandboxes.table, child, s); // it outlives the server as its parent does
        results.push({ sandbox: reached({ m: child, s }) });
      } catch (err) {
        const { status } = answerOf(err);
        results.push({ error: { code: status, message: messageOf(err) } });
      }
    }
    sendJson(res, 201, results);
  };
}
