// The Dockerfile subset msb build takes: ARG, FROM (one stage), RUN, COPY, ENV, WORKDIR, USER, CMD
// and ENTRYPOINT, in shell or JSON form, with comments, line continuations and the escape
// directive. Anything else is a DockerfileError naming the line and the instruction. parseDockerfile
// is pure: it takes the build arguments too, as they decide FROM; dockerfileSteps turns the
// instructions into build steps, substituting variables from the environment and the ARGs so far,
// confining COPY sources to the context (no "..", no symlink out of it) and leaving out what the
// context's .dockerignore excludes.
import { realpath, stat } from "node:fs/promises";

import { DockerfileError, InvalidArgumentError } from "../errors.js";
import { readDockerignore } from "./ignore.js";
import { copySources, SourceError } from "./sources.js";
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
  /** The base image, ARGs substituted. */
  from: string;
  instructions: DockerfileInstruction[];
  escape: string;
  /** The build arguments given (--build-arg), each one an ARG declares. */
  buildArgs: Record<string, string>;
  /** The values of the ARGs before FROM: an ARG after it that names one without a default takes it. */
  globalArgs: Record<string, string>;
}

const SUPPORTED = ["ARG", "FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT"];
const VAR_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_SIZE = 1024 * 1024;

const fail = (i: Pick<DockerfileInstruction, "line" | "keyword">, why: string) =>
  new DockerfileError(`Dockerfile line ${i.line}${i.keyword ? ` (${i.keyword})` : ""}: ${why}`, i.line, i.keyword);

// `$VAR` substitution in an instruction, its errors the instruction's.
function substitute(i: DockerfileInstruction, text: string, vars: Record<string, string>, escapeChar: string, split = true): string[] {
  try {
    return words(text, vars, escapeChar, split);
  } catch (err) {
    throw err instanceof WordError ? fail(i, err.message) : err;
  }
}

// An ARG's declarations: NAME, or NAME=default (substituted from `vars`).
function argDeclarations(i: DockerfileInstruction, vars: Record<string, string>, escapeChar: string): { name: string; value?: string }[] {
  if (i.args === "") throw fail(i, "give ARG NAME[=default]");
  return substitute(i, i.args, vars, escapeChar).map((w) => {
    const eq = w.indexOf("=");
    const name = eq < 0 ? w : w.slice(0, eq);
    if (!VAR_NAME.test(name)) throw fail(i, `${JSON.stringify(name)} is not a variable name`);
    return eq < 0 ? { name } : { name, value: w.slice(eq + 1) };
  });
}

/**
 * Splits a Dockerfile into instructions; checks that each is one msb build takes, and that each of
 * `buildArgs` is declared by an ARG. FROM is substituted from the ARGs before it.
 */
export function parseDockerfile(text: string, buildArgs: Record<string, string> = {}): ParsedDockerfile {
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
  const at = instructions.findIndex((i) => i.keyword !== "ARG");
  const first = instructions[at];
  if (first?.keyword !== "FROM") throw fail(first ?? { line: 1, keyword: "" }, "a Dockerfile starts with FROM (only ARG may come before it)");
  const extra = instructions.slice(at + 1).find((i) => i.keyword === "FROM");
  if (extra) throw fail(extra, "a second FROM: multi-stage builds are not supported");
  const declared = new Set<string>();
  const globalArgs: Record<string, string> = {};
  for (const i of instructions.slice(0, at)) {
    for (const { name, value } of argDeclarations(i, globalArgs, escapeChar)) {
      declared.add(name);
      const v = buildArgs[name] ?? value;
      if (v !== undefined) globalArgs[name] = v;
    }
  }
  // The names an ARG after FROM declares (their defaults are substituted later, with the environment).
  for (const i of instructions.slice(at + 1)) if (i.keyword === "ARG") for (const { name } of argDeclarations(i, {}, escapeChar)) declared.add(name);
  const unknown = Object.keys(buildArgs).filter((n) => !declared.has(n));
  if (unknown.length)
    throw new InvalidArgumentError(
      `--build-arg ${unknown.join(", ")}: the Dockerfile declares no such ARG${unknown.length > 1 ? "s" : ""}; declare it (ARG ${unknown[0]}) or drop it`,
    );
  const from = substitute(first, first.args, globalArgs, escapeChar);
  if (from[0]?.startsWith("--")) throw fail(first, `the flag ${from[0]} is not supported`);
  if (!from[0] && first.args.includes("$")) throw fail(first, `${JSON.stringify(first.args)} names no image: an ARG it uses has no value`);
  if (!from[0] || !(from.length === 1 || (from.length === 3 && from[1]!.toUpperCase() === "AS"))) throw fail(first, "give FROM IMAGE [AS NAME]");
  if (from[0] === "scratch") throw fail(first, "FROM scratch is not supported: start from an image");
  return { from: from[0], instructions: instructions.slice(at + 1), escape: escapeChar, buildArgs: { ...buildArgs }, globalArgs };
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

/**
 * The build steps of a parsed Dockerfile, COPY sources taken from `context` (a directory), less
 * what its .dockerignore excludes. `env`: the base image's environment, for $VAR substitution.
 */
export async function dockerfileSteps(df: ParsedDockerfile, context: string, env: Record<string, string> = {}): Promise<BuildStep[]> {
  const ctx = await realpath(context).catch(() => undefined);
  if (!ctx || !(await stat(ctx)).isDirectory()) throw new DockerfileError(`the build context ${context} is not a directory`, 0, "");
  const ignore = await readDockerignore(ctx);
  const vars = { ...env };
  // The ARGs so far that have a value: in RUN's environment and in substitutions, where ENV wins.
  const args: Record<string, string> = {};
  const steps: BuildStep[] = [];
  for (const i of df.instructions) {
    const sub = (text: string, split = true) => substitute(i, text, { ...args, ...vars }, df.escape, split);
    const json = jsonForm(i.args);
    if (i.args === "") throw fail(i, `${i.keyword} needs arguments`);
    switch (i.keyword) {
      case "ARG":
        for (const { name, value } of argDeclarations(i, { ...args, ...vars }, df.escape)) {
          const v = df.buildArgs[name] ?? value ?? df.globalArgs[name];
          if (v !== undefined) args[name] = v;
        }
        break;
      case "RUN": {
        flags(i, []);
        const buildArgs = Object.fromEntries(Object.entries(args).filter(([k]) => !(k in vars)));
        steps.push({ run: json ? json.map(shellQuote).join(" ") : i.args, ...(Object.keys(buildArgs).length ? { buildArgs } : {}) });
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
        for (const k of Object.keys(record)) if (!VAR_NAME.test(k)) throw fail(i, `${JSON.stringify(k)} is not a variable name`);
        Object.assign(vars, record);
        steps.push({ env: record });
        break;
      }
      case "COPY": {
        const { flags: f, rest } = flags(i, ["chown", "chmod"]);
        const args = jsonForm(rest) ?? sub(rest);
        if (args.length < 2) throw fail(i, "give COPY SRC... DEST");
        const dest = args.at(-1)!;
        const srcs: string[] = [];
        for (const s of args.slice(0, -1)) {
          srcs.push(
            ...(await copySources(ctx, s, ignore).catch((err: unknown) => {
              throw err instanceof SourceError ? fail(i, err.message) : err;
            })),
          );
        }
        if (srcs.length > 1 && !dest.endsWith("/"))
          throw fail(i, `with several sources the destination must be a directory ending in "/", not ${JSON.stringify(dest)}`);
        const chmod = f.get("chmod");
        if (chmod !== undefined && !/^[0-7]{3,4}$/.test(chmod)) throw fail(i, `--chmod=${chmod} is not octal permission bits such as 755`);
        const chown = f.get("chown");
        for (const src of srcs) {
          // Several sources: each file goes into dest, each directory's contents too.
          const c = { src, dest, ...(chown ? { user: chown } : {}), ...(chmod ? { mode: parseInt(chmod, 8) } : {}) };
          steps.push({ copy: ignore ? { ...c, ignore } : c });
        }
        break;
      }
    }
  }
  return steps;
}
