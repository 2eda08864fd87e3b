// Terminals: an interactive bash driven through a pty in a real VM (prompt, stty size after a
// resize, Ctrl-C reaching the foreground job, job control, the exit code).
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { type ExecProcess, InvalidArgumentError, PythonSandbox } from "../../src/index.js";

let sb: PythonSandbox;

beforeAll(async () => {
  sb = await PythonSandbox.create({ image: process.env.MSB_PYTHON_IMAGE ?? "local:python", memory: 256 });
}, 180_000);
afterAll(() => sb?.stop());

// Everything a terminal printed so far, and a way to wait for a pattern past a mark.
function screen(p: ExecProcess) {
  let text = "";
  const waiters: (() => void)[] = [];
  void (async () => {
    for await (const c of p) {
      expect(c.stream).toBe("stdout"); // a terminal has one output
      text += c.data.toString("utf8");
      for (const w of waiters.splice(0)) w();
    }
  })().catch(() => {}); // the terminal ends with its sandbox; a test that failed first says why
  return {
    mark: () => text.length,
    async waitFor(re: RegExp, from = 0, ms = 30_000): Promise<string> {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = re.exec(text.slice(from));
        if (m) return m[0];
        if (Date.now() > deadline) throw new Error(`no ${re} on the terminal; it shows:\n${text.slice(from)}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
    },
  };
}

// Waits until the process running `argv` in the guest is its terminal's foreground job (its
// process group is the terminal's: fields 5 and 8 of /proc/PID/stat). bash starts or resumes a
// job before it hands it the terminal, and a Ctrl-C sent in between reaches bash instead.
async function foregroundJob(argv: string[]): Promise<void> {
  const script = `for d in /proc/[0-9]*; do [ "$(tr '\\0' ' ' < $d/cmdline 2>/dev/null)" = "${argv.join(" ")} " ] && cat $d/stat; done; true`;
  for (let tries = 0; tries < 200; tries++) {
    const stat = (await sb.command.run("sh", ["-c", script])).stdout;
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (stat && f[2] === f[5]) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${argv.join(" ")} never became its terminal's foreground job`);
}

describe("command.spawn with a pty", () => {
  it("runs an interactive bash: prompt, stty size and resize, Ctrl-C, job control, exit code", async () => {
    const p = sb.command.spawn("bash", ["--norc", "--noprofile", "-i"], { pty: { rows: 24, cols: 80 }, env: { PS1: "PROMPT$ " } });
    const t = screen(p);
    await t.waitFor(/PROMPT\$ /);

    let at = t.mark();
    await p.write("stty size; echo $TERM\r");
    await t.waitFor(/24 80\r\nxterm-256color/, at);

    at = t.mark();
    p.resize(40, 132);
    await p.write("stty size\r");
    await t.waitFor(/40 132/, at);

    // Ctrl-C is a byte on the terminal: the line discipline signals the foreground job.
    at = t.mark();
    await p.write("sleep 100\r");
    await foregroundJob(["sleep", "100"]);
    await p.write("\x03");
    await t.waitFor(/\^C/, at);
    at = t.mark();
    await p.write("echo status=$?\r");
    await t.waitFor(/status=130/, at);

    // Job control: a background job, listed, brought to the foreground and stopped with Ctrl-C.
    at = t.mark();
    await p.write("sleep 60 &\r");
    await t.waitFor(/\[1\] \d+/, at);
    at = t.mark();
    await p.write("jobs\r");
    await t.waitFor(/\[1\]\+\s+Running\s+sleep 60 &/, at);
    at = t.mark();
    await p.write("fg\r");
    await t.waitFor(/sleep 60\r\n/, at);
    await foregroundJob(["sleep", "60"]);
    await p.write("\x03");
    await t.waitFor(/PROMPT\$ /, at + 1);

    await p.write("exit 7\r");
    const exit = await p.exit;
    expect(exit.exitCode).toBe(7);
  }, 120_000);

  it("refuses a bad size and a resize of a process without a terminal", async () => {
    expect(() => sb.command.spawn("true", [], { pty: { rows: 0, cols: 80 } })).toThrow(InvalidArgumentError);
    const plain = sb.command.spawn("true");
    expect(() => plain.resize(10, 10)).toThrow(/without a terminal/);
    await plain.exit;
  });
});
