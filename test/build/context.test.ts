// msb build's context and arguments as a user meets them, in real microVMs: a .dockerignore keeps
// a dependency directory, a secret and logs (all but one, by an exception) out of `COPY . /app`,
// and a change to an excluded file keeps the build CACHED; ARG before FROM picks the base, ARG
// after it reaches RUN (default and --build-arg) but not the image's environment, and a changed
// --build-arg reruns the RUN after it; a --build-arg no ARG declares is refused before any VM.
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { sandboxLogs as logsOn, msbOn, runningOn, stepLines, throwawayCache } from "./cli.js";

let root: string;
let cache: string;
let ctx: string;
const msb = (...args: string[]) => msbOn(cache, ...args);
const sandboxLogs = () => logsOn(cache);

const DOCKERFILE = `ARG BASE=local:busybox
FROM $BASE
ARG GREETING=hello
ARG VERSION
COPY . /app
RUN echo "$GREETING $VERSION" > /args.txt
`;

const DOCKERIGNORE = `# what the image must not get
node_modules/
/secret.env
logs
!logs/keep.log
**/*.tmp
`;

const CONTEXT: Record<string, string> = {
  "app.js": "console.log('app')\n",
  "secret.env": "TOKEN=do-not-ship\n",
  "node_modules/dep/index.js": "module.exports = 1\n",
  "logs/debug.log": "noise\n",
  "logs/keep.log": "kept\n",
  "src/main.js": "main\n",
  "src/scratch.tmp": "tmp\n",
};

// Lists /app, shows what RUN wrote and whether the ARGs are in the image's environment.
const CHECK = "cd /app && find . | sort; cat /args.txt; env | grep -E '^(GREETING|VERSION|BASE)=' || echo no-args-in-env";

beforeAll(() => {
  ({ root, cache } = throwawayCache("msb-build-context-"));
  ctx = path.join(root, "ctx");
  for (const [rel, text] of Object.entries({ ...CONTEXT, Dockerfile: DOCKERFILE, ".dockerignore": DOCKERIGNORE })) {
    mkdirSync(path.dirname(path.join(ctx, rel)), { recursive: true });
    writeFileSync(path.join(ctx, rel), text);
  }
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true }); // the link to the real local/ goes, not what it points at
});

describe("msb build: .dockerignore and ARG", () => {
  it("copies only what .dockerignore lets through, and gives RUN the ARGs but not the image", async () => {
    const built = await msb("build", "-t", "msbctx", "--build-arg", "VERSION=1", ctx);
    expect(built.stderr).not.toMatch(/^msb:/m);
    expect(built.code).toBe(0);
    expect(stepLines(built.stderr).map((s) => s.step)).toEqual([`[1/2] COPY ${ctx} /app`, '[2/2] RUN echo "$GREETING $VERSION" > /args.txt']);
    const ran = await msb("run", "msbctx", "--memory", "128", "--", "sh", "-c", CHECK);
    expect(ran.code).toBe(0);
    expect(ran.stdout).toBe(
      [".", "./.dockerignore", "./Dockerfile", "./app.js", "./logs", "./logs/keep.log", "./src", "./src/main.js", "hello 1", "no-args-in-env", ""].join("\n"),
    );
  });

  it("keeps the build CACHED when only excluded files change", async () => {
    writeFileSync(path.join(ctx, "secret.env"), "TOKEN=rotated\n");
    writeFileSync(path.join(ctx, "node_modules", "dep", "index.js"), "module.exports = 2\n");
    writeFileSync(path.join(ctx, "logs", "debug.log"), "more noise\n");
    const before = sandboxLogs();
    const again = await msb("build", "-t", "msbctx", "--build-arg", "VERSION=1", ctx);
    expect(again.code).toBe(0);
    expect(stepLines(again.stderr).map((s) => s.cached)).toEqual([true, true]);
    expect(sandboxLogs()).toEqual(before);
  });

  it("reruns the RUN after an ARG whose --build-arg changed, and only that", async () => {
    const before = sandboxLogs().length;
    const built = await msb("build", "-t", "msbctx", "--build-arg", "VERSION=2", "--build-arg", "GREETING=hi there", ctx);
    expect(built.code).toBe(0);
    expect(stepLines(built.stderr).map((s) => s.cached)).toEqual([true, false]);
    expect(sandboxLogs().length).toBe(before + 1);
    const ran = await msb("run", "msbctx", "--memory", "128", "--", "cat", "/args.txt");
    expect(ran).toMatchObject({ code: 0, stdout: "hi there 2\n" });
  });

  it("refuses a --build-arg no ARG declares, and a COPY of an excluded source, before booting anything", async () => {
    const before = sandboxLogs();
    const unknown = await msb("build", "-t", "msbctx-bad", "--build-arg", "VERSION=1", "--build-arg", "VERISON=1", ctx);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("msb: --build-arg VERISON: the Dockerfile declares no such ARG");
    const unset = await msb("build", "-t", "msbctx-bad", "--build-arg", "MSB_TEST_UNSET_ARG", ctx);
    expect(unset.stderr).toContain("msb: --build-arg MSB_TEST_UNSET_ARG takes its value from msb's environment, where MSB_TEST_UNSET_ARG is not set");
    const file = path.join(root, "secret.Dockerfile");
    writeFileSync(file, "FROM local:busybox\nCOPY secret.env /secret.env\n");
    const secret = await msb("build", "-t", "msbctx-bad", "-f", file, ctx);
    expect(secret.code).toBe(1);
    expect(secret.stderr).toContain(`msb: Dockerfile line 2 (COPY): "secret.env" is not in the build context ${ctx} (its .dockerignore excludes it)`);
    expect(sandboxLogs()).toEqual(before);
    expect((await msb("images")).stdout).not.toContain("msbctx-bad");
  });

  it("leaves no VM running", () => {
    expect(runningOn(cache)).toEqual([]);
  });
});
