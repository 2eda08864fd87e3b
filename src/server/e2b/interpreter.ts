// The code interpreter (port 49999): /execute runs code in a language's default interpreter, or
// in a context's, and answers newline-delimited JSON events; /contexts makes, lists, ends and
// restarts contexts, each an interpreter of its own. Python, JavaScript (Node) and bash, each the
// library's REPL (src/sandbox/repl.ts) in the sandbox. Contexts go along with a memory pause, a
// fork and an adoption by the next server, as the library's interpreters do.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import { ExecError, InvalidArgumentError } from "../../errors.js";
import type { Execution } from "../../sandbox/execution.js";
import type { Interpreter, PythonSandbox } from "../../sandbox/kinds.js";
import type { ReplLanguage } from "../../sandbox/repl.js";
import type { ImageCatalog } from "../catalog.js";
import { NotFoundError } from "../errors.js";
import { readJsonObject, sendJson } from "../http.js";
import type { CodeContext, E2bSandbox, E2bState } from "./shared.js";

type Language = ReplLanguage["language"];

/** The E2B SDK's language names that are served, and the interpreter each is. */
const LANGUAGES: Readonly<Record<string, Language>> = { python: "python", js: "javascript", javascript: "javascript", bash: "bash" };
/** What runs each, for the error when an image lacks it. */
const PROGRAMS: Readonly<Record<Language, { program: string; kind: "PythonSandbox" | "NodeSandbox" }>> = {
  python: { program: "python3", kind: "PythonSandbox" },
  javascript: { program: "node", kind: "NodeSandbox" },
  bash: { program: "bash", kind: "PythonSandbox" },
};
// Languages the SDK offers that are not served, and why.
const NOT_SERVED: Readonly<Record<string, string>> = {
  ts: "TypeScript needs a Node that strips types (22.6 or later) and the built-in images have Debian's Node 18: compile it to JavaScript and run that as js",
  typescript:
    "TypeScript needs a Node that strips types (22.6 or later) and the built-in images have Debian's Node 18: compile it to JavaScript and run that as js",
  r: "no R interpreter is built in",
  java: "no Java interpreter is built in",
};

/** The interpreter `name` (an E2B language, default python) stands for, or an InvalidArgumentError. */
function languageOf(name: unknown): Language {
  if (name === undefined || name === null) return "python";
  const key = typeof name === "string" ? name.toLowerCase() : "";
  if (Object.hasOwn(LANGUAGES, key)) return LANGUAGES[key]!;
  const why = Object.hasOwn(NOT_SERVED, key) ? `: ${NOT_SERVED[key]}` : "";
  throw new InvalidArgumentError(`language ${JSON.stringify(name)} is not served by this code interpreter${why}; it serves python, js (javascript) and bash`);
}

// `interpreter`, fresh, going to `cwd` before its first cell.
function entering(interpreter: Interpreter, language: Language, cwd: string): Interpreter {
  let entered: Promise<unknown> | undefined;
  return {
    id: interpreter.id,
    language: interpreter.language,
    close: () => interpreter.close(),
    async run(code, opts) {
      entered ??= interpreter.run(enter(language, cwd));
      await entered;
      return interpreter.run(code, opts);
    },
  };
}

// The code a fresh interpreter runs to work in `cwd`, made first when missing.
function enter(language: Language, cwd: string): string {
  if (language === "python") return `import os\nos.makedirs(${JSON.stringify(cwd)}, exist_ok=True)\nos.chdir(${JSON.stringify(cwd)})`;
  if (language === "javascript") return `require("fs").mkdirSync(${JSON.stringify(cwd)}, { recursive: true }); process.chdir(${JSON.stringify(cwd)})`;
  const quoted = `'${cwd.replaceAll("'", `'\\''`)}'`;
  return `mkdir -p ${quoted} && cd ${quoted}`;
}

/** A sandbox's contexts and default interpreters as recorded: each interpreter by its id. */
export interface ContextRecords {
  contexts: { id: string; language: string; cwd: string; interpreter: string }[];
  defaults: { language: string; interpreter: string }[];
}

export function contextRecords(s: E2bState): ContextRecords {
  if (s.carried) return s.carried;
  return {
    contexts: [...s.contexts].map(([id, c]) => ({ id, language: c.language, cwd: c.cwd, interpreter: c.interpreter.id })),
    defaults: [...s.defaults].map(([language, i]) => ({ language, interpreter: i.id })),
  };
}

/**
 * Gives `s` the contexts and default interpreters `records` names, each the interpreter of the
 * same id in `sandbox` (resumed, forked or adopted, which carried its interpreters along). A
 * context whose interpreter did not come along (a cell was running when it was copied) keeps its
 * id with a fresh interpreter, which goes to its cwd before its first cell: its state is lost.
 */
export function linkContexts(s: E2bState, sandbox: unknown, records: Partial<ContextRecords> | undefined): void {
  const kind = typeof (sandbox as PythonSandbox).interpreters === "function" ? (sandbox as PythonSandbox) : undefined;
  const carried = new Map((kind?.interpreters() ?? []).map((i) => [i.id, i]));
  s.contexts.clear();
  s.defaults.clear();
  delete s.carried;
  for (const c of Array.isArray(records?.contexts) ? records.contexts : []) {
    if (typeof c?.id !== "string" || typeof c.cwd !== "string" || typeof c.language !== "string" || !kind) continue;
    const served = LANGUAGES[c.language.toLowerCase()];
    const i = carried.get(c.interpreter) ?? (served ? entering(kind.interpreter(served), served, c.cwd) : undefined);
    if (i) s.contexts.set(c.id, { language: c.language, cwd: c.cwd, interpreter: i });
  }
  for (const d of Array.isArray(records?.defaults) ? records.defaults : []) {
    const i = carried.get(d?.interpreter);
    if (i && typeof d.language === "string") s.defaults.set(d.language, i);
  }
}

/** The code interpreter's routes; `changed(sb)`: its contexts changed, for the record the next server adopts by. */
export function codeInterpreter(catalog: ImageCatalog, bodyLimit: number, changed: (sb: E2bSandbox) => void) {
  // An interpreter whose program the image lacks fails to start with ENOENT: say which images have it.
  const missing =
    ({ m }: E2bSandbox, language: Language) =>
    (err: unknown) => {
      if (!(err instanceof ExecError && err.errnoName === "ENOENT")) throw err;
      const { program, kind } = PROGRAMS[language];
      const names = catalog.namesOfKind(kind);
      throw new InvalidArgumentError(
        `the ${language} interpreter needs ${program}, which the image of sandbox ${m.name} (from ${JSON.stringify(m.template)}) does not have: ` +
          `start the sandbox from one that has it${names.length ? ` (${names.join(", ")})` : ""}`,
        { cause: err },
      );
    };

  // A context's interpreter, started in its cwd.
  async function start(sb: E2bSandbox, language: Language, cwd: string): Promise<CodeContext["interpreter"]> {
    const interpreter = catalog.codeInterpreterOf(sb.m, language).interpreter(language);
    await interpreter.run(enter(language, cwd)).catch(missing(sb, language));
    return interpreter;
  }

  // The interpreter of a language with no context: the sandbox's own run() for its kind's
  // language (a template starts it already), else one kept per language.
  function byDefault(sb: E2bSandbox, language: Language): (code: string) => Promise<Execution> {
    const sandbox = catalog.codeInterpreterOf(sb.m, language);
    if (sandbox.interpreterLanguage === language) return (code) => sandbox.run(code);
    let interpreter = sb.s.defaults.get(language);
    if (!interpreter) {
      interpreter = sandbox.interpreter(language);
      sb.s.defaults.set(language, interpreter);
      changed(sb);
    }
    return interpreter.run;
  }

  // POST creates a context, GET lists them, DELETE /contexts/ID ends one, POST
  // /contexts/ID/restart starts it afresh.
  async function contexts(sb: E2bSandbox, req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    const all = sb.s.contexts;
    const shown = (id: string, c: CodeContext) => ({ id, language: c.language, cwd: c.cwd });
    const [, , id, action] = pathname.split("/");
    if (!id && req.method === "POST") {
      const body = await readJsonObject(req, bodyLimit);
      const language = languageOf(body.language ?? undefined);
      const cwd = typeof body.cwd === "string" && body.cwd.startsWith("/") ? body.cwd : "/root";
      const ctxId = randomBytes(8).toString("hex");
      const c = { language: typeof body.language === "string" ? body.language : "python", cwd, interpreter: await start(sb, language, cwd) };
      all.set(ctxId, c);
      changed(sb);
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
      changed(sb);
      return void res.writeHead(204).end();
    }
    if (action === "restart" && req.method === "POST") {
      c.interpreter.close();
      try {
        c.interpreter = await start(sb, languageOf(c.language), c.cwd);
      } catch (err) {
        all.delete(id!); // no interpreter is left to run its cells
        throw err;
      } finally {
        changed(sb);
      }
      return void res.writeHead(204).end();
    }
    throw new NotFoundError(`${req.method} ${pathname} is not served`);
  }

  async function execute(sb: E2bSandbox, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonObject(req, bodyLimit);
    if (typeof body.code !== "string") throw new InvalidArgumentError(`code must be a string, got ${typeof body.code}`);
    const ctx = typeof body.context_id === "string" ? sb.s.contexts.get(body.context_id) : undefined;
    if (typeof body.context_id === "string" && !ctx) throw new NotFoundError(`context ${JSON.stringify(body.context_id)} not found`);
    // A context runs in its own language, whatever the request says.
    const language = languageOf(ctx ? ctx.language : (body.language ?? undefined));
    const code = body.code;
    const e = await (ctx ? ctx.interpreter.run(code) : byDefault(sb, language)(code)).catch(missing(sb, language));
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    const line = (o: object) => res.write(`${JSON.stringify(o)}\n`);
    const now = new Date().toISOString();
    // The interpreter echoes a final expression's value on stdout, as a prompt does; here it is
    // the main result instead.
    const echoed = e.result !== undefined && e.stdout.endsWith(`${e.result}\n`) ? e.result.length + 1 : 0;
    const printed = e.stdout.slice(0, e.stdout.length - echoed);
    if (printed) line({ type: "stdout", text: printed, timestamp: now });
    // A shell's stderr is its commands' output, not the report of its error.
    if (e.stderr && (!e.hasError() || language === "bash")) line({ type: "stderr", text: e.stderr, timestamp: now });
    if (e.hasError()) {
      // Python's and Node's report ends in "Name: value"; the traceback is all of it.
      const last = e.stderr.trim().split("\n").at(-1) ?? "";
      const at = last.indexOf(": ");
      const value = e.errorValue ?? (at > 0 ? last.slice(at + 2) : "");
      const traceback = language === "bash" ? `${e.errorName}: ${value}` : e.stderr;
      line({ type: "error", name: e.errorName ?? (at > 0 ? last.slice(0, at) : last), value, traceback });
    } else if (e.result !== undefined) line({ type: "result", text: e.result, is_main_result: true });
    line({ type: "end_of_execution" });
    res.end();
  }

  return { contexts, execute };
}
