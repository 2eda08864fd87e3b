// .dockerignore: the paths of a build context that COPY leaves out, with Docker's rules (patterns
// relative to the context's root, "**", "!" exceptions, comments, slashes cleaned, the last match
// wins, a match on a directory covering what is in it). The matching is @balena/dockerignore's, a
// port of Docker's own, made case-sensitive as Docker is on Linux.
import { readFile, stat } from "node:fs/promises";
import path from "node:path";

import dockerignore from "@balena/dockerignore";

import { InvalidArgumentError } from "../errors.js";

/** What a COPY leaves out: the lines of the .dockerignore of `context` (an absolute real path). */
export interface ContextIgnore {
  context: string;
  patterns: string[];
}

const MAX_SIZE = 1024 * 1024;

/** The .dockerignore of `context` (its real path), or undefined when it has none. */
export async function readDockerignore(context: string): Promise<ContextIgnore | undefined> {
  const file = path.join(context, ".dockerignore");
  const st = await stat(file).catch(() => undefined);
  if (st === undefined) return undefined;
  if (!st.isFile()) throw new InvalidArgumentError(`${file} is not a file`);
  const { size } = st;
  if (size > MAX_SIZE) throw new InvalidArgumentError(`${file} is ${size} bytes; more than ${MAX_SIZE} is not a .dockerignore`);
  return { context, patterns: (await readFile(file, "utf8")).split(/\r?\n/) };
}

export class Exclusions {
  private readonly matcher;
  /** An exception ("!") may keep something inside an excluded directory: a walk must look in it. */
  readonly lookInside: boolean;

  constructor(readonly ignore: ContextIgnore) {
    // .default: the package is CommonJS whose export is also its own .default, the one its types name.
    this.matcher = dockerignore.default({ ignorecase: false }).add(ignore.patterns);
    this.lookInside = ignore.patterns.some((p) => p.trim().startsWith("!"));
  }

  /** Whether `abs` (a path inside the context) is excluded; the context itself never is. */
  excludes(abs: string): boolean {
    const rel = path.relative(this.ignore.context, abs);
    return rel !== "" && this.matcher.ignores(rel);
  }
}
