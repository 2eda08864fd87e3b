// COPY's sources in a build context: a path, or the names a wildcard in its last part matches,
// each confined to the context (no "..", no symlink out of it) and not wholly excluded by its
// .dockerignore. Errors are SourceErrors, which the Dockerfile's parser names the line of.
import { lstat, readdir, realpath } from "node:fs/promises";
import path from "node:path";

import { walkSource } from "./copy.js";
import { type ContextIgnore, Exclusions } from "./ignore.js";

export class SourceError extends Error {}

/** A path inside `context` (its real path): no "..", no absolute path, no symlink out of it. */
async function inContext(context: string, rel: string): Promise<string> {
  const norm = path.posix.normalize(rel.replace(/^\/+/, ""));
  if (norm === ".." || norm.startsWith("../")) throw new SourceError(`${JSON.stringify(rel)} is outside the build context ${context}`);
  const real = await realpath(path.join(context, norm)).catch(() => undefined);
  if (real === undefined) throw new SourceError(`${JSON.stringify(rel)} is not in the build context ${context}`);
  if (real !== context && !real.startsWith(context + path.sep))
    throw new SourceError(`${JSON.stringify(rel)} leads outside the build context ${context} (a symlink)`);
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

/** The real paths a COPY source names in `context` (a real path), in name order. */
export async function copySources(context: string, src: string, ignore?: ContextIgnore): Promise<string[]> {
  const ex = ignore && new Exclusions(ignore);
  // Excluded with nothing inside that an exception keeps (a symlink has no inside: it is not followed).
  const excluded = async (abs: string) =>
    !!ex?.excludes(abs) &&
    (!ex.lookInside ||
      !(await lstat(abs)).isDirectory() ||
      (await walkSource(abs, ignore).then(
        () => false,
        () => true,
      )));
  const named = (rel: string) => path.join(context, path.posix.normalize(rel.replace(/^\/+/, "")));
  if (!GLOB.test(src)) {
    const real = await inContext(context, src);
    if ((await excluded(named(src))) || (await excluded(real)))
      throw new SourceError(`${JSON.stringify(src)} is not in the build context ${context} (its .dockerignore excludes it)`);
    return [real];
  }
  const dirName = path.posix.dirname(src);
  if (GLOB.test(dirName)) throw new SourceError(`${JSON.stringify(src)}: wildcards are supported in the last part of a path only`);
  const dir = await inContext(context, dirName);
  const re = globPattern(path.posix.basename(src));
  const out: string[] = [];
  for (const n of (await readdir(dir).catch(() => [] as string[])).filter((n) => re.test(n)).sort()) {
    if (await excluded(path.join(dir, n))) continue; // before inContext: an excluded link out of the context is no error
    const real = await inContext(context, path.posix.join(dirName, n));
    if (!(await excluded(real))) out.push(real);
  }
  if (!out.length)
    throw new SourceError(`${JSON.stringify(src)} matches nothing in the build context${ignore ? " (less what its .dockerignore excludes)" : ""}`);
  return out;
}
