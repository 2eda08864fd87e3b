// .dockerignore with Docker's rules: what walkSource leaves out of a COPY (patterns from the
// context's root, "**", "!" exceptions, comments, slashes cleaned, last match wins, case kept),
// that an excluded file is not in the COPY's digest, and that dockerfileSteps refuses a COPY whose
// source the .dockerignore wholly excludes, as a missing one.
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { sourceDigest, walkSource } from "../../src/build/copy.js";
import { dockerfileSteps, parseDockerfile } from "../../src/build/dockerfile.js";
import { readDockerignore } from "../../src/build/ignore.js";
import { DockerfileError } from "../../src/errors.js";

let ctx: string;
const DOCKERIGNORE = [
  "# dependencies and secrets",
  "node_modules",
  "  secret.env  ",
  "/build/",
  "**/*.tmp",
  "logs",
  "!logs/keep.log",
  "docs/../notes.txt",
  "Dockerfile",
  ".dockerignore",
  "",
].join("\n");

const files = {
  Dockerfile: "FROM local:busybox\n",
  "app.js": "app",
  "Secret.env": "not the same name",
  "secret.env": "key",
  "node_modules/dep/index.js": "dep",
  "build/out.bin": "out",
  "src/main.js": "main",
  "src/cache.tmp": "tmp",
  "src/deep/x.tmp": "tmp",
  "src/secret.env": "only the root's is excluded",
  "logs/a.log": "a",
  "logs/keep.log": "kept",
  "notes.txt": "notes",
};

beforeAll(() => {
  ctx = realpathSync(mkdtempSync(path.join(tmpdir(), "msb-dockerignore-")));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(ctx, rel)), { recursive: true });
    writeFileSync(path.join(ctx, rel), text);
  }
  writeFileSync(path.join(ctx, ".dockerignore"), DOCKERIGNORE);
});
afterAll(() => rmSync(ctx, { recursive: true, force: true }));

const walked = async (src = ctx) => (await walkSource(src, await readDockerignore(ctx))).map((e) => (e.type === "dir" ? `${e.rel}/` : e.rel));

describe(".dockerignore", () => {
  it("leaves out what it excludes, keeping an exception inside an excluded directory", async () => {
    expect(await walked()).toEqual(["Secret.env", "app.js", "logs/", "logs/keep.log", "src/", "src/deep/", "src/main.js", "src/secret.env"]);
    // A directory whose files it excludes is still copied, empty, as Docker does.
    expect(await walked(path.join(ctx, "src"))).toEqual(["deep/", "main.js", "secret.env"]);
  });

  it("copies everything without one", async () => {
    expect((await walkSource(ctx)).filter((e) => e.type === "file")).toHaveLength(Object.keys(files).length + 1);
    expect(await readDockerignore(path.join(ctx, "src"))).toBeUndefined();
  });

  it("keeps what it excludes out of the COPY's digest", async () => {
    const ignore = await readDockerignore(ctx);
    const digest = async () => sourceDigest(await walkSource(ctx, ignore));
    const before = await digest();
    writeFileSync(path.join(ctx, "node_modules", "dep", "index.js"), "changed");
    writeFileSync(path.join(ctx, "logs", "a.log"), "changed");
    expect(await digest()).toBe(before);
    writeFileSync(path.join(ctx, "logs", "keep.log"), "changed");
    expect(await digest()).not.toBe(before);
  });

  it("refuses a COPY whose source it wholly excludes, naming it; a wildcard skips what it excludes", async () => {
    const steps = (copy: string) => dockerfileSteps(parseDockerfile(`FROM local:busybox\nRUN true\n${copy}`), ctx);
    for (const src of ["secret.env", "node_modules", "node_modules/dep/index.js", "build", "src/cache.tmp", "Dockerfile"]) {
      const e = await steps(`COPY ${src} /x`).catch((err: unknown) => err as DockerfileError);
      expect(e).toBeInstanceOf(DockerfileError);
      expect((e as DockerfileError).line).toBe(3);
      expect((e as DockerfileError).message).toBe(
        `Dockerfile line 3 (COPY): ${JSON.stringify(src)} is not in the build context ${ctx} (its .dockerignore excludes it)`,
      );
    }
    const ignore = await readDockerignore(ctx);
    expect(await steps("COPY logs /l")).toEqual([{ run: "true" }, { copy: { src: path.join(ctx, "logs"), dest: "/l", ignore } }]);
    const glob = await steps("COPY *.env app.js /dst/");
    expect(glob.map((s) => ("copy" in s ? path.relative(ctx, s.copy.src) : "run"))).toEqual(["run", "Secret.env", "app.js"]);
    await expect(steps("COPY src/*.tmp /dst/")).rejects.toThrow('"src/*.tmp" matches nothing in the build context (less what its .dockerignore excludes)');
  });
});
