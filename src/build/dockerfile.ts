// The Dockerfile subset msb build takes: FROM (one stage), RUN, COPY, ENV, WORKDIR, USER, CMD and
// ENTRYPOINT, in shell or JSON form, with comments, line continuations and the escape directive.
// Anything else is a DockerfileError naming the line and the instruction. parseDockerfile is pure;
// dockerfileSteps turns the instructions into build steps, substituting variables from the
// environment so far and confining COPY sources to the context (no "..", no symlink out of it).
import { readdir, realpath, stat } from "node:fs/promises";
import path from "node:path";

import { DockerfileError } from "../errors.js";
import type { BuildStep } from "./spec.js";
import { WordError, words } from "./words.js";

export interface DockerfileInstruction {
  /** 1-based line the instruction starts on. */
  line: number;
  /** Upper case: "RUN". */
  keyword: string;
  /** Everything after the keyword, continuation lines joined. */
  args: string;
}

export interface ParsedDockerfile {
  from: string;
  instructions: DockerfileInstruction[];
  escape: string;
}

const SUPPORTED = ["FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT"];
const MAX_SIZE = 1024 * 1024;

const fail = (i: Pick<DockerfileInstruction, "line" | "keyword">, why: string) =>
  new DockerfileError(`Dockerfile line ${i.line}${i.keyword ? ` (${i.keyword})` : ""}: ${why}`, i.line, i.keyword);

/** Splits a Dockerfile into instructions; checks that each is one msb build takes. */
export function parseDockerfile(text: string): ParsedDockerfile {
  if (text.length > MAX_SIZE) throw new DockerfileError(`the Dockerfile is ${text.length} bytes; more than ${MAX_SIZE} is not one`, 0, "");
  const lines = text.split(/\r?\n/);
  let escapeChar = "\\";
  // Parser directives: "# key=value" comments before anything else.
  for (const l of lines) {
    const d = /^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$/.exec(l);
    if (!d) break;
    if (d[1]!.toLowerCase() === "escape") {
      if (d[2] !== "\\" && d[2] !== "`") throw new DockerfileError(`the escape directive takes \\ or \`, not ${d[2]}`, 1, "");
      escapeChar = d[2]!;
    }
  }
  const instructions: DockerfileInstruction[] = [];
  let pending: { line: number; text: string } | undefined;
  for (const [n, raw] of lines.entries()) {
    const trimmed = raw.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue; // also inside a continuation, as Docker does
    const body = raw.replace(/\s+$/, "");
    const continued = body.endsWith(escapeChar);
    const part = continued ? body.slice(0, -1) : body;
    pending = pending ? { line: pending.line, text: pending.text + part } : { line: n + 1, text: part.replace(/^\s+/, "") };
    if (continued) continue;
    instructions.push({ line: pending.line, ...split(pending.text) });
    pending = undefined;
  }
  if (pending) instructions.push({ line: pending.line, ...split(pending.text) });
  for (const i of instructions) {
    if (!SUPPORTED.includes(i.keyword)) throw fail(i, `${i.keyword} is not supported; msb build takes ${SUPPORTED.join(", ")}`);
  }
  const first = instructions[0];
  if (first?.keyword !== "FROM") throw fail(first ?? { line: 1, keyword: "" }, "a Dockerfile starts with FROM");
  const extra = instructions.slice(1).find((i) => i.keyword === "FROM");
  if (extra) throw fail(extra, "a second FROM: multi-stage builds are not supported");
  const from = first.args.split(/\s+/);
  if (from[0]?.startsWith("--")) throw fail(first, `the flag ${from[0]} is not supported`);
  if (!from[0] || !(from.length === 1 || (from.length === 3 && from[1]!.toUpperCase() === "AS"))) throw fail(first, "give FROM IMAGE [AS NAME]");
  if (from[0] === "scratch") throw fail(first, "FROM scratch is not supported: start from an image");
  return { from: from[0], instructions: instructions.slice(1), escape: escapeChar };
}

function split(text: string): { keyword: string; args: string } {
  const m = /^(\S+)\s*([\s\S]*)$/.exec(text)!;
  return { keyword: m[1]!.toUpperCase(), args: m[2]!.trim() };
}

// The JSON form ["a", "b"]: an array of strings, else undefined (then it is the shell form).
function jsonForm(args: string): string[] | undefined {
  if (!args.startsWith("[")) return undefined;
  try {
    const v = JSON.parse(args) as unknown;
    return Array.isArray(v) && v.every((s) => typeof s === "string") ? v : undefined;
  } catch {
    return undefined;
  }
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

// Leading --name[=value] flags of an instruction, and what follows them.
function flags(i: DockerfileInstruction, allowed: string[]): { flags: Map<string, string>; rest: string } {
  const out = new Map<string, string>();
  let rest = i.args;
  for (let m = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest); m; m = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest)) {
    if (!allowed.includes(m[1]!))
      throw fail(i, `the flag --${m[1]} is not supported${allowed.length ? ` (only ${allowed.map((a) => `--${a}`).join(", ")})` : ""}`);
    out.set(m[1]!, m[2] ?? "");
    rest = rest.slice(m[0].length);
  }
  return { flags: out, rest };
}

/** A path inside `context` (its real path), or a DockerfileError: no "..", no absolute path, no symlink out of it. */
async function inContext(i: DockerfileInstruction, context: string, rel: string): Promise<string> {
  const norm = path.posix.normalize(rel.replace(/^\/+/, ""));
  if (norm === ".." || norm.startsWith("../")) throw fail(i, `${JSON.stringify(rel)} is outside the build context ${context}`);
  const real = await realpath(path.join(context, norm)).catch(() => undefined);
  if (real === undefined) throw fail(i, `${JSON.stringify(rel)} is not in the build context ${context}`);
  if (real !== context && !real.startsWith(context + path.sep)) throw fail(i, `${JSON.stringify(rel)} leads outside the build context ${context} (a symlink)`);
  return real;
}

const GLOB = /[*?[]/;
const globPattern = (g: string) =>
  new RegExp(
    `^${g
      .replace(/[.+^${}()|\\]/g, "\\$&")
      .replace(/\*/g, "[^/]*")
      .replace(/\?/g, "[^/]")}$`,
  );

// A COPY source: one path, or the names a wildcard in its last component matches (in name order).
async function sources(i: DockerfileInstruction, context: string, src: string): Promise<string[]> {
  const base = path.posix.basename(src);
  if (!GLOB.test(src)) return [await inContext(i, context, src)];
  if (GLOB.test(path.posix.dirname(src))) throw fail(i, `${JSON.stringify(src)}: wildcards are supported in the last part of a path only`);
  const dir = await inContext(i, context, path.posix.dirname(src));
  const re = globPattern(base);
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => re.test(n)).sort();
  if (!names.length) throw fail(i, `${JSON.stringify(src)} matches nothing in the build context`);
  return Promise.all(names.map((n) => inContext(i, context, path.posix.join(path.posix.dirname(src), n))));
}

/**
 * The build steps of a parsed Dockerfile, COPY sources taken from `context` (a directory).
 * `env`: the base image's environment, for $VAR substitution.
 */
export async function dockerfileSteps(df: ParsedDockerfile, context: string, env: Record<string, string> = {}): Promise<BuildStep[]> {
  const ctx = await realpath(context).catch(() => undefined);
  if (!ctx || !(await stat(ctx)).isDirectory()) throw new DockerfileError(`the build context ${context} is not a directory`, 0, "");
  const vars = { ...env };
  const steps: BuildStep[] = [];
  for (const i of df.instructions) {
    const sub = (text: string, split = true) => {
      try {
        return words(text, vars, df.escape, split);
      } catch (err) {
        throw err instanceof WordError ? fail(i, err.message) : err;
      }
    };
    const json = jsonForm(i.args);
    if (i.args === "") throw fail(i, `${i.keyword} needs arguments`);
    switch (i.keyword) {
      case "RUN": {
        flags(i, []);
        steps.push({ run: json ? json.map(shellQuote).join(" ") : i.args });
        break;
      }
      case "CMD":
      case "ENTRYPOINT": {
        const argv = json ?? ["/bin/sh", "-c", i.args];
        steps.push(i.keyword === "CMD" ? { cmd: argv } : { entrypoint: argv });
        break;
      }
      case "WORKDIR":
        steps.push({ workdir: sub(i.args, false)[0]! });
        break;
      case "USER":
        steps.push({ user: sub(i.args, false)[0]!.trim() });
        break;
      case "ENV": {
        const ws = sub(i.args);
        const record: Record<string, string> = {};
        if (!ws[0]!.includes("=")) {
          // The old form: ENV NAME the rest of the line.
          const name = /^\S+/.exec(i.args)![0];
          record[name] = sub(i.args.slice(name.length).trim(), false)[0]!;
        } else {
          for (const w of ws) {
            const eq = w.indexOf("=");
            if (eq <= 0) throw fail(i, `${JSON.stringify(w)} is not NAME=VALUE`);
            record[w.slice(0, eq)] = w.slice(eq + 1);
          }
        }
        for (const k of Object.keys(record)) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw fail(i, `${JSON.stringify(k)} is not a variable name`);
        Object.assign(vars, record);
        steps.push({ env: record });
        break;
      }
      case "COPY": {
        const { flags: f, rest } = flags(i, ["chown", "chmod"]);
        const args = jsonForm(rest) ?? sub(rest);
        if (args.length < 2) throw fail(i, "give COPY SRC... DEST");
        const dest = args.at(-1)!;
        const srcs = (await Promise.all(args.slice(0, -1).map((s) => sources(i, ctx, s)))).flat();
        if (srcs.length > 1 && !dest.endsWith("/"))
          throw fail(i, `with several sources the destination must be a directory ending in "/", not ${JSON.stringify(dest)}`);
        const chmod = f.get("chmod");
        if (chmod !== undefined && !/^[0-7]{3,4}$/.test(chmod)) throw fail(i, `--chmod=${chmod} is not octal permission bits such as 755`);
        const chown = f.get("chown");
        for (const src of srcs) {
          // Several sources: each file goes into dest, each directory's contents too.
          steps.push({ copy: { src, dest, ...(chown ? { user: chown } : {}), ...(chmod ? { mode: parseInt(chmod, 8) } : {}) } });
        }
        break;
      }
    }
  }
  return steps;
}
