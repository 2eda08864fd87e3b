// Paths inside an image root as a chroot would see them: archive paths cleaned lexically, and directory
// chains resolved through symlinks without ever leaving the root (securejoin's semantics).
import fs, { type Stats } from "node:fs";

const MAX_HOPS = 40; // Linux's MAXSYMLINKS

/** A reason to refuse the current entry; applyLayer wraps it into a LayerError naming the entry. */
export class Refusal extends Error {}

/** Lexically cleans an archive path to a relative one ("" = the root); refuses what climbs above the root. */
export function clean(p: string): string {
  const parts: string[] = [];
  for (const c of p.split("/")) {
    if (c === "" || c === ".") continue;
    if (c === "..") {
      if (!parts.length) throw new Refusal("escapes the image root");
      parts.pop();
    } else parts.push(c);
  }
  return parts.join("/");
}

// Synchronous on purpose, like all of layer application: see the note above the Applier in layers.ts.
export function lstatOrNull(p: string): Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (err) {
    if (["ENOENT", "ENOTDIR"].includes((err as NodeJS.ErrnoException).code!)) return null;
    throw err;
  }
}

/** An image root (a real path, no symlinks in it) and the paths relative to it ("" = the root itself). */
export class RootPath {
  constructor(readonly root: string) {}

  /** The host path of `rel`, which must already be clean (or resolved). */
  host(rel: string): string {
    return rel ? `${this.root}/${rel}` : this.root;
  }

  /**
   * Resolves directory components like a chroot would (securejoin): symlinks are followed but
   * re-rooted at the target, ".." stops at it. The result names only real dirs or missing ones.
   */
  resolveDir(rel: string): string {
    const done: string[] = [];
    const pending = rel ? rel.split("/").reverse() : []; // a stack: next component last
    let hops = 0;
    while (pending.length) {
      const c = pending.pop()!;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        done.pop();
        continue;
      }
      done.push(c);
      const here = this.host(done.join("/"));
      const st = lstatOrNull(here);
      if (!st?.isSymbolicLink()) continue;
      if (++hops > MAX_HOPS) throw new Refusal("has too many levels of symbolic links in its parent directories");
      const link = fs.readlinkSync(here);
      done.pop();
      if (link.startsWith("/")) done.length = 0;
      for (const l of link.split("/").reverse()) pending.push(l);
    }
    return done.join("/");
  }
}
