// msb build as a user runs it: a Dockerfile over local:busybox built in a real microVM, the image
// then run with msb run and listed by msb images; the step cache (a rebuild boots nothing, a changed
// COPY source reruns it and what follows); a failing RUN, an unsupported instruction and a COPY
// source outside the context refused. Everything goes into a throwaway cache whose local/ is the
// real cache's (local:busybox is there), removed afterwards.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { sandboxLogs as logsOn, msbOn, runningOn, stepLines, throwawayCache } from "./cli.js";

const TAG = "docker.io/library/msbtest:latest";

let root: string;
let cache: string;
let ctx: string;
const msb = (...args: string[]) => msbOn(cache, ...args);
const sandboxLogs = () => logsOn(cache);

const DOCKERFILE = `FROM local:busybox
# deletes a file and a directory of the base, remakes the directory, adds a file
RUN rm /linuxrc && rm -rf /usr/sbin && mkdir /usr/sbin \\
    && echo only > /usr/sbin/only && echo made-by-run > /etc/from-run
COPY hello.txt /srv/hello.txt
ENV GREETING="hi there"
WORKDIR /srv
CMD ["sh", "-c", "echo cmd ran in $(pwd) with $GREETING"]
`;

const CHECK = 'ls /linuxrc 2>&1; ls /usr/sbin; cat /etc/from-run /srv/hello.txt; echo "$GREETING"; pwd';

beforeAll(() => {
  ({ root, cache } = throwawayCache("msb-build-test-"));
  ctx = path.join(root, "ctx");
  mkdirSync(ctx);
  writeFileSync(path.join(ctx, "Dockerfile"), DOCKERFILE);
  writeFileSync(path.join(ctx, "hello.txt"), "hello from the context\n");
  writeFileSync(path.join(root, "x"), "outside the context\n");
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true }); // the link to the real local/ goes, not what it points at
});

describe("msb build", () => {
  it("builds a Dockerfile into an image msb run boots: deletions, RUN's and COPY's files, ENV, WORKDIR, CMD", async () => {
    const before = sandboxLogs().length;
    const built = await msb("build", "-t", "msbtest", ctx);
    expect(built.stderr).not.toMatch(/^msb:/m);
    expect(built.code).toBe(0);
    expect(built.stdout).toMatch(new RegExp(`^${TAG.replace(/[.:/]/g, "\\$&")} [0-9a-f]{12}\\n$`));
    const steps = stepLines(built.stderr);
    expect(steps.map((s) => s.step)).toEqual([
      "[1/5] RUN rm /linuxrc && rm -rf /usr/sbin && mkdir /usr/sbin     && echo only > /usr/sbin/only && echo made-by-run > /etc/from-run",
      `[2/5] COPY ${ctx}/hello.txt /srv/hello.txt`,
      '[3/5] ENV GREETING="hi there"',
      "[4/5] WORKDIR /srv",
      '[5/5] CMD ["sh","-c","echo cmd ran in $(pwd) with $GREETING"]',
    ]);
    expect(steps.every((s) => !s.cached)).toBe(true);
    expect(built.stderr).toMatch(/built in \d+\.\d s, 0 of 5 steps cached/);
    expect(sandboxLogs().length).toBe(before + 1); // one build VM for all its steps

    const ran = await msb("run", "msbtest", "--memory", "128", "--", "sh", "-c", CHECK);
    expect(ran.code).toBe(0);
    expect(ran.stdout).toBe("ls: /linuxrc: No such file or directory\nonly\nmade-by-run\nhello from the context\nhi there\n/srv\n");

    // No command: the image's CMD, in its WORKDIR with its ENV.
    const cmd = await msb("run", "msbtest", "--memory", "128");
    expect(cmd).toMatchObject({ code: 0, stdout: "cmd ran in /srv with hi there\n" });

    const images = await msb("images");
    expect(images.stdout).toContain(TAG);
  });

  it("takes every step of an unchanged build from the cache and boots no VM", async () => {
    const before = sandboxLogs();
    const again = await msb("build", "-t", "msbtest", ctx);
    expect(again.code).toBe(0);
    const steps = stepLines(again.stderr);
    expect(steps).toHaveLength(5);
    expect(steps.every((s) => s.cached)).toBe(true);
    expect(again.stderr).toMatch(/5 of 5 steps cached/);
    expect(sandboxLogs()).toEqual(before);
  });

  it("reruns a COPY whose source changed, and every step after it", async () => {
    writeFileSync(path.join(ctx, "hello.txt"), "hello again\n");
    const before = sandboxLogs().length;
    const built = await msb("build", "-t", "msbtest", ctx);
    expect(built.code).toBe(0);
    expect(stepLines(built.stderr).map((s) => s.cached)).toEqual([true, false, false, false, false]);
    expect(built.stderr).toMatch(/1 of 5 steps cached/);
    expect(sandboxLogs().length).toBe(before + 1);
    const ran = await msb("run", "msbtest", "--memory", "128", "--", "sh", "-c", CHECK);
    expect(ran.stdout).toBe("ls: /linuxrc: No such file or directory\nonly\nmade-by-run\nhello again\nhi there\n/srv\n");
  });

  it("stops at a failing RUN: names the step and exit code, keeps the log, tags nothing", async () => {
    const file = path.join(root, "fail.Dockerfile");
    writeFileSync(file, "FROM local:busybox\nENV X=1\nRUN echo boom; exit 3\nRUN echo never\n");
    const failed = await msb("build", "-t", "msbtest-fail", "-f", file, ctx);
    expect(failed.code).toBe(1);
    const m = /^msb: build step 2 \(RUN echo boom; exit 3\) exited with 3; the build's output is in (\S+\.log)$/m.exec(failed.stderr);
    expect(m, failed.stderr).not.toBeNull();
    const log = m![1]!;
    expect(path.dirname(log)).toBe(path.join(cache, "builds", "logs"));
    expect(readFileSync(log, "utf8")).toContain("boom");
    expect(failed.stderr).not.toContain("[3/3]"); // the step after it never began
    expect(failed.stdout).toBe("");
    const images = await msb("images");
    expect(images.stdout).toContain(TAG);
    expect(images.stdout).not.toContain("msbtest-fail");
  });

  it("refuses an unsupported instruction, naming its line, before booting anything", async () => {
    const file = path.join(root, "expose.Dockerfile");
    writeFileSync(file, "FROM local:busybox\nRUN true\n\nEXPOSE 8080\n");
    const before = sandboxLogs();
    const r = await msb("build", "-t", "msbtest-expose", "-f", file, ctx);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^msb: Dockerfile line 4 \(EXPOSE\): EXPOSE is not supported/m);
    expect(sandboxLogs()).toEqual(before);
    expect((await msb("images")).stdout).not.toContain("msbtest-expose");
  });

  it("refuses a COPY source outside the context", async () => {
    const file = path.join(root, "escape.Dockerfile");
    writeFileSync(file, "FROM local:busybox\nCOPY ../x /x\n");
    const before = sandboxLogs();
    const r = await msb("build", "-t", "msbtest-escape", "-f", file, ctx);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`msb: Dockerfile line 2 (COPY): "../x" is outside the build context ${ctx}`);
    expect(sandboxLogs()).toEqual(before);
    expect((await msb("images")).stdout).not.toContain("msbtest-escape");
  });

  it("leaves no VM running", () => {
    expect(runningOn(cache)).toEqual([]); // every VM of these builds and runs booted from the throwaway cache
  });
});
