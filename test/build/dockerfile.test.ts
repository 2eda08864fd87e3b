// The Dockerfile subset msb build takes: parseDockerfile's syntax (forms, continuations, comments,
// directives), ARG before FROM and build arguments, and refusals; dockerfileSteps' steps, with ARG
// values and COPY sources confined to the context.
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { dockerfileSteps, parseDockerfile } from "../../src/build/dockerfile.js";
import { DockerfileError, InvalidArgumentError } from "../../src/errors.js";

/** The DockerfileError `f` throws (fails the test if it throws anything else, or nothing). */
async function refusal(f: () => unknown): Promise<DockerfileError> {
  try {
    await f();
  } catch (err) {
    expect(err).toBeInstanceOf(DockerfileError);
    return err as DockerfileError;
  }
  throw new Error("expected a DockerfileError, got none");
}

const steps = (text: string, context: string, env: Record<string, string> = {}, args: Record<string, string> = {}) =>
  dockerfileSteps(parseDockerfile(text, args), context, env);

describe("parseDockerfile", () => {
  it("takes FROM and the instructions after it, with their lines and upper-cased keywords", () => {
    const df = parseDockerfile('from local:busybox AS base\n\nrun echo hi\nCmd ["sh"]\n');
    expect(df.from).toBe("local:busybox");
    expect(df.escape).toBe("\\");
    expect(df.instructions).toEqual([
      { line: 3, keyword: "RUN", args: "echo hi" },
      { line: 4, keyword: "CMD", args: '["sh"]' },
    ]);
  });

  it("joins continuation lines, skipping comments and blank lines inside them, and numbers the instruction by its first line", () => {
    const df = parseDockerfile(
      ["# a comment before FROM", "FROM local:busybox", "RUN echo a \\", "  # a comment inside the continuation", "", "    && echo b", "ENV X=1"].join("\n"),
    );
    expect(df.instructions).toEqual([
      { line: 3, keyword: "RUN", args: "echo a     && echo b" },
      { line: 7, keyword: "ENV", args: "X=1" },
    ]);
  });

  it("takes CRLF line ends and a continuation on the last line", () => {
    const df = parseDockerfile("FROM local:busybox\r\nRUN echo a \\\r\n echo b \\");
    expect(df.instructions).toEqual([{ line: 2, keyword: "RUN", args: "echo a  echo b" }]);
  });

  it("honours the escape directive: ` continues lines, \\ is then literal", () => {
    const df = parseDockerfile("# escape=`\nFROM local:busybox\nRUN dir C:\\ `\n  && echo done\n");
    expect(df.escape).toBe("`");
    expect(df.instructions).toEqual([{ line: 3, keyword: "RUN", args: "dir C:\\   && echo done" }]);
    // A directive comes before anything else: later, the same text is a comment.
    expect(parseDockerfile("FROM local:busybox\n# escape=`\nRUN a \\\n b").escape).toBe("\\");
  });

  it("refuses an escape directive other than \\ or `", async () => {
    const e = await refusal(() => parseDockerfile("# escape=x\nFROM local:busybox"));
    expect(e.message).toContain("escape directive");
    expect(e.message).toContain("x");
  });

  it("refuses an unknown instruction, naming it and its line", async () => {
    const e = await refusal(() => parseDockerfile("FROM local:busybox\nRUN true\n\nEXPOSE 8080\n"));
    expect(e.line).toBe(4);
    expect(e.instruction).toBe("EXPOSE");
    expect(e.message).toMatch(/^Dockerfile line 4 \(EXPOSE\): EXPOSE is not supported; msb build takes ARG, FROM, RUN, COPY/);
    const lower = await refusal(() => parseDockerfile("FROM local:busybox\nhealthcheck NONE"));
    expect([lower.line, lower.instruction]).toEqual([2, "HEALTHCHECK"]);
  });

  it("refuses a second FROM (multi-stage builds)", async () => {
    const e = await refusal(() => parseDockerfile("FROM local:busybox AS a\nRUN true\nFROM local:busybox\nCOPY --from=a /x /x\n"));
    expect(e.line).toBe(3);
    expect(e.message).toContain("multi-stage builds are not supported");
  });

  it("refuses what does not start with FROM, and FROM forms it does not take", async () => {
    expect((await refusal(() => parseDockerfile("RUN true\nFROM local:busybox"))).message).toContain("starts with FROM");
    expect((await refusal(() => parseDockerfile("# only a comment\n"))).message).toContain("starts with FROM");
    expect((await refusal(() => parseDockerfile("FROM scratch"))).message).toContain("FROM scratch is not supported");
    expect((await refusal(() => parseDockerfile("FROM --platform=linux/arm64 local:busybox"))).message).toContain("--platform");
    expect((await refusal(() => parseDockerfile("FROM a b"))).message).toContain("FROM IMAGE [AS NAME]");
  });

  it("takes ARGs before FROM, for FROM only: a default, or the build argument given", () => {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: Dockerfile substitution, not a JS template
    const text = "ARG TAG=busybox\nARG REPO=local\nFROM ${REPO}:$TAG AS base\nRUN true\n";
    expect(parseDockerfile(text).from).toBe("local:busybox");
    const df = parseDockerfile(text, { TAG: "python" });
    expect(df.from).toBe("local:python");
    expect(df.globalArgs).toEqual({ TAG: "python", REPO: "local" });
    expect(df.instructions).toEqual([{ line: 4, keyword: "RUN", args: "true" }]); // the ARGs are not steps
    expect(parseDockerfile("ARG A B=2 C='x y'\nFROM local:busybox", { A: "1" }).globalArgs).toEqual({ A: "1", B: "2", C: "x y" });
  });

  it("refuses a FROM whose ARG has no value, a bad ARG, and anything but ARG before FROM", async () => {
    const e = await refusal(() => parseDockerfile("ARG BASE\nFROM $BASE"));
    expect([e.line, e.message]).toEqual([2, 'Dockerfile line 2 (FROM): "$BASE" names no image: an ARG it uses has no value']);
    expect((await refusal(() => parseDockerfile("ARG 9X=1\nFROM local:busybox"))).message).toContain('"9X" is not a variable name');
    expect((await refusal(() => parseDockerfile("ARG\nFROM local:busybox"))).message).toContain("give ARG NAME[=default]");
    expect((await refusal(() => parseDockerfile("ARG X\nENV Y=1\nFROM local:busybox"))).message).toContain("only ARG may come before it");
  });

  it("refuses a build argument no ARG declares, naming it, and takes one an ARG after FROM declares", () => {
    const text = "ARG BASE=local:busybox\nFROM $BASE\nARG VERSION\nRUN true";
    expect(parseDockerfile(text, { VERSION: "2", BASE: "local:busybox" }).buildArgs).toEqual({ VERSION: "2", BASE: "local:busybox" });
    expect(() => parseDockerfile(text, { VERSION: "2", NOPE: "x" })).toThrow(InvalidArgumentError);
    expect(() => parseDockerfile(text, { NOPE: "x" })).toThrow("--build-arg NOPE: the Dockerfile declares no such ARG; declare it (ARG NOPE) or drop it");
  });

  it("refuses a Dockerfile over 1 MiB", async () => {
    const e = await refusal(() => parseDockerfile(`FROM local:busybox\n${"#".repeat(1024 * 1024)}`));
    expect(e.message).toContain("bytes");
  });
});

describe("dockerfileSteps", () => {
  let root: string;
  let ctx: string;
  beforeAll(() => {
    root = realpathSync(mkdtempSync(path.join(tmpdir(), "msb-dockerfile-")));
    ctx = path.join(root, "ctx");
    mkdirSync(path.join(ctx, "app", "sub"), { recursive: true });
    writeFileSync(path.join(ctx, "a.txt"), "a");
    writeFileSync(path.join(ctx, "b.txt"), "b");
    writeFileSync(path.join(ctx, "c.md"), "c");
    writeFileSync(path.join(ctx, "app", "sub", "x"), "x");
    writeFileSync(path.join(root, "secret"), "outside");
    symlinkSync("../secret", path.join(ctx, "leak"));
    symlinkSync(path.join(root), path.join(ctx, "up"));
    symlinkSync("a.txt", path.join(ctx, "inside-link"));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("gives RUN, CMD and ENTRYPOINT in shell and JSON forms", async () => {
    const s = await steps(
      [
        "FROM local:busybox",
        "RUN echo $HOME",
        'RUN ["printf", "%s|", "it\'s"]',
        "CMD echo hi",
        'CMD ["sh", "-c", "echo"]',
        'ENTRYPOINT ["/bin/env"]',
        "ENTRYPOINT env -0",
      ].join("\n"),
      ctx,
    );
    expect(s).toEqual([
      { run: "echo $HOME" }, // the shell substitutes, not the parser
      { run: `'printf' '%s|' 'it'\\''s'` }, // each word quoted for sh
      { cmd: ["/bin/sh", "-c", "echo hi"] },
      { cmd: ["sh", "-c", "echo"] },
      { entrypoint: ["/bin/env"] },
      { entrypoint: ["/bin/sh", "-c", "env -0"] },
    ]);
  });

  it("takes ENV in both forms, substituting the base's and earlier variables", async () => {
    const s = await steps(
      [
        "FROM local:busybox",
        "ENV A=1 B=\"two words\" C='$A'",
        // biome-ignore lint/suspicious/noTemplateCurlyInString: Dockerfile substitution, not a JS template
        "ENV D $A and ${B}",
        // biome-ignore lint/suspicious/noTemplateCurlyInString: Dockerfile substitution, not a JS template
        "ENV E=${MISSING:-fallback} F=${A:+set} P=$PATH:/opt/bin",
        "WORKDIR /srv/$A",
        "USER app:$A",
      ].join("\n"),
      ctx,
      { PATH: "/usr/bin:/bin" },
    );
    expect(s).toEqual([
      { env: { A: "1", B: "two words", C: "$A" } },
      { env: { D: "1 and two words" } },
      { env: { E: "fallback", F: "set", P: "/usr/bin:/bin:/opt/bin" } },
      { workdir: "/srv/1" },
      { user: "app:1" },
    ]);
  });

  it("puts ARG values in RUN's environment and in later substitutions, not in the image's ENV; ENV wins over ARG", async () => {
    const s = await steps(
      [
        "ARG BASE=local:busybox",
        "ARG GLOBAL=g",
        "FROM $BASE",
        "RUN echo none yet",
        "ARG GLOBAL",
        "ARG V=1",
        "ARG W=$V-w UNSET",
        "ARG HOME=/arg-home",
        "RUN echo $V",
        // biome-ignore lint/suspicious/noTemplateCurlyInString: Dockerfile substitution, not a JS template
        "ENV FROM_ARG=$W V=from-env U=${UNSET:-unset}",
        "WORKDIR /srv/$V/$GLOBAL",
        "RUN echo $V",
      ].join("\n"),
      ctx,
      { HOME: "/root" },
      { V: "given" },
    );
    expect(s).toEqual([
      { run: "echo none yet" },
      // A redeclared global ARG takes the global's value; HOME is the base image's: its env wins.
      { run: "echo $V", buildArgs: { GLOBAL: "g", V: "given", W: "given-w" } },
      { env: { FROM_ARG: "given-w", V: "from-env", U: "unset" } },
      { workdir: "/srv/from-env/g" },
      { run: "echo $V", buildArgs: { GLOBAL: "g", W: "given-w" } },
    ]);
  });

  it("refuses ENV entries that are not NAME=VALUE or name no variable, and unmatched quotes", async () => {
    expect((await refusal(() => steps("FROM local:busybox\nENV A=1 junk", ctx))).message).toContain('"junk" is not NAME=VALUE');
    expect((await refusal(() => steps("FROM local:busybox\nENV 1A=x", ctx))).message).toContain('"1A" is not a variable name');
    const q = await refusal(() => steps('FROM local:busybox\nRUN true\nENV A="open', ctx));
    expect(q.line).toBe(3);
    expect(q.message).toContain("unmatched");
  });

  it("gives COPY with --chown and --chmod, its sources as real paths in the context", async () => {
    const s = await steps(
      ["FROM local:busybox", "COPY --chown=app:app --chmod=750 a.txt /srv/", "COPY app /srv/app", 'COPY ["./b.txt", "/b"]', "COPY inside-link /l"].join("\n"),
      ctx,
    );
    expect(s).toEqual([
      { copy: { src: path.join(ctx, "a.txt"), dest: "/srv/", user: "app:app", mode: 0o750 } },
      { copy: { src: path.join(ctx, "app"), dest: "/srv/app" } },
      { copy: { src: path.join(ctx, "b.txt"), dest: "/b" } },
      { copy: { src: path.join(ctx, "a.txt"), dest: "/l" } }, // a symlink inside the context is followed
    ]);
  });

  it("expands a wildcard in the last part of a COPY source, in name order; several sources need a directory", async () => {
    const s = await steps("FROM local:busybox\nCOPY *.txt c.md /dst/", ctx);
    expect(s.map((x) => ("copy" in x ? path.basename(x.copy.src) : ""))).toEqual(["a.txt", "b.txt", "c.md"]);
    expect((await refusal(() => steps("FROM local:busybox\nCOPY *.txt /dst", ctx))).message).toContain('must be a directory ending in "/"');
    expect((await refusal(() => steps("FROM local:busybox\nCOPY *.none /dst/", ctx))).message).toContain("matches nothing");
    expect((await refusal(() => steps("FROM local:busybox\nCOPY */x /dst/", ctx))).message).toContain("last part of a path only");
  });

  it("refuses COPY flags it does not take and a --chmod that is not octal", async () => {
    expect((await refusal(() => steps("FROM local:busybox\nCOPY --from=base /x /x", ctx))).message).toContain(
      "--from is not supported (only --chown, --chmod)",
    );
    expect((await refusal(() => steps("FROM local:busybox\nCOPY --chmod=u+x a.txt /a", ctx))).message).toContain("--chmod=u+x is not octal");
    expect((await refusal(() => steps("FROM local:busybox\nRUN --mount=type=cache true", ctx))).message).toContain("--mount is not supported");
    expect((await refusal(() => steps("FROM local:busybox\nCOPY a.txt", ctx))).message).toContain("give COPY SRC... DEST");
    expect((await refusal(() => steps("FROM local:busybox\nWORKDIR", ctx))).message).toContain("WORKDIR needs arguments");
  });

  it("confines COPY sources to the context: no .., no symlink out, nothing missing", async () => {
    for (const [src, why] of [
      ["../secret", "is outside the build context"],
      ["app/../../secret", "is outside the build context"],
      ["..", "is outside the build context"],
      ["leak", "leads outside the build context"],
      ["up/secret", "leads outside the build context"],
      ["up/ctx/../secret", "leads outside the build context"],
      ["missing.txt", "is not in the build context"],
    ] as const) {
      const e = await refusal(() => steps(`FROM local:busybox\nRUN true\nCOPY ${src} /x`, ctx));
      expect(e.line).toBe(3);
      expect(e.instruction).toBe("COPY");
      expect(e.message).toContain(`${JSON.stringify(src)} ${why}`);
    }
    // An absolute source is taken from the context's root, not the host's.
    const abs = await refusal(() => steps("FROM local:busybox\nCOPY /etc/passwd /x", ctx));
    expect(abs.message).toContain('"/etc/passwd" is not in the build context');
    expect(await steps("FROM local:busybox\nCOPY /a.txt /x", ctx)).toEqual([{ copy: { src: path.join(ctx, "a.txt"), dest: "/x" } }]);
    // A wildcard's matches are checked one by one.
    expect((await refusal(() => steps("FROM local:busybox\nCOPY lea* /x/", ctx))).message).toContain("leads outside the build context");
  });

  it("refuses a context that is not a directory", async () => {
    const e = await refusal(() => steps("FROM local:busybox\nRUN true", path.join(ctx, "a.txt")));
    expect(e.message).toContain("is not a directory");
    await expect(steps("FROM local:busybox\nRUN true", path.join(root, "nope"))).rejects.toThrow(/build context .* is not a directory/);
  });
});
