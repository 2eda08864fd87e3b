// The code interpreter (port 49999): /execute runs code in the sandbox's interpreter, or in a
// context's, and answers newline-delimited JSON events; /contexts makes, lists, ends and
// restarts contexts, each an interpreter of its own.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../../errors.js";
import type { ImageCatalog } from "../catalog.js";
import { NotFoundError } from "../errors.js";
import { readJsonObject, sendJson } from "../http.js";
import type { CodeContext, E2bSandbox } from "./shared.js";

export function codeInterpreter(catalog: ImageCatalog, bodyLimit: number) {
  // The code interpreter runs Python only, in a sandbox whose kind has a Python interpreter.
  const python = ({ m }: E2bSandbox, language: unknown) => {
    if (language !== undefined && language !== "python")
      throw new InvalidArgumentError(`language ${JSON.stringify(language)} is not served by this code interpreter: python`);
    return catalog.interpreterOf(m, "python");
  };

  // POST creates a context, GET lists them, DELETE /contexts/ID ends one, POST
  // /contexts/ID/restart starts it afresh.
  async function contexts(sb: E2bSandbox, req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    const all = sb.s.contexts;
    const shown = (id: string, c: CodeContext) => ({ id, language: "python", cwd: c.cwd });
    const [, , id, action] = pathname.split("/");
    if (!id && req.method === "POST") {
      const body = await readJsonObject(req, bodyLimit);
      const py = python(sb, body.language ?? undefined);
      const cwd = typeof body.cwd === "string" && body.cwd.startsWith("/") ? body.cwd : "/root";
      const ctxId = randomBytes(8).toString("hex");
      const c = { cwd, interpreter: py.interpreter() };
      await c.interpreter.run(`import os
os.makedirs(${JSON.stringify(cwd)}, exist_ok=True)
os.chdir(${JSON.stringify(cwd)})`);
      all.set(ctxId, c);
      return sendJson(res, 200, shown(ctxId, c));
    }
    if (!id && req.method === "GET")
      return sendJson(
        res,
        200,
        [...all].map(([i, c]) => shown(i, c)),
      );
    const c = id ? all.get(id) : undefined;
    if (!c) throw new NotFoundError(`context ${JSON.stringify(id)} not found`);
    if (!action && req.method === "DELETE") {
      c.interpreter.close();
      all.delete(id!);
      return void res.writeHead(204).end();
    }
    if (action === "restart" && req.method === "POST") {
      c.interpreter.close();
      c.interpreter = python(sb, undefined).interpreter();
      await c.interpreter.run(`import os
os.chdir(${JSON.stringify(c.cwd)})`);
      return void res.writeHead(204).end();
    }
    throw new NotFoundError(`${req.method} ${pathname} is not served`);
  }

  async function execute(sb: E2bSandbox, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonObject(req, bodyLimit);
    if (typeof body.code !== "string") throw new InvalidArgumentError(`code must be a string, got ${typeof body.code}`);
    const py = python(sb, body.language ?? undefined);
    const ctx = typeof body.context_id === "string" ? sb.s.contexts.get(body.context_id) : undefined;
    if (typeof body.context_id === "string" && !ctx) throw new NotFoundError(`context ${JSON.stringify(body.context_id)} not found`);
    const e = ctx ? await ctx.interpreter.run(body.code) : await py.run(body.code);
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    const line = (o: object) => res.write(`${JSON.stringify(o)}\n`);
    const now = new Date().toISOString();
    // The interpreter echoes a final expression's value on stdout, as a prompt does; here it is
    // the main result instead.
    const echoed = e.result !== undefined && e.stdout.endsWith(`${e.result}\n`) ? e.result.length + 1 : 0;
    const printed = e.stdout.slice(0, e.stdout.length - echoed);
    if (printed) line({ type: "stdout", text: printed, timestamp: now });
    if (e.hasError()) {
      // The report ends in "Name: value"; the traceback is all of it.
      const last = e.stderr.trim().split("\n").at(-1) ?? "";
      const at = last.indexOf(": ");
      line({ type: "error", name: e.errorName ?? (at > 0 ? last.slice(0, at) : last), value: at > 0 ? last.slice(at + 2) : "", traceback: e.stderr });
    } else {
      if (e.stderr) line({ type: "stderr", text: e.stderr, timestamp: now });
      if (e.result !== undefined) line({ type: "result", text: e.result, is_main_result: true });
    }
    line({ type: "end_of_execution" });
    res.end();
  }

  return { contexts, execute };
}
