// msb run -it and msb shell driven through a real pseudo-terminal: tmux runs them in a pane,
// keys are typed with send-keys, the screen is read with capture-pane. The terminal's settings
// (stty -g) must be the same after msb as before, whichever way it ended.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const usable = spawnSync("tmux", ["-V"]).status === 0;
const socket = `msbtest-${randomBytes(3).toString("hex")}`;
const work = mkdtempSync(path.join(tmpdir(), "msb-term-"));
const tmux = (...args: string[]) => execFileSync("tmux", ["-L", socket, ...args], { encoding: "utf8" });

afterAll(() => {
  spawnSync("tmux", ["-L", socket, "kill-server"]);
  rmSync(work, { recursive: true, force: true });
});

// Runs `msb ARGS` in a new tmux pane wrapped so that the terminal settings before and after, and
// msb's exit status, land in files.
function start(session: string, args: string): { file: (n: string) => string } {
  const file = (n: string) => path.join(work, `${session}.${n}`);
  const script = `stty -g > ${file("before")}; ${process.execPath} ${MSB} ${args}; echo $? > ${file("rc")}; stty -g > ${file("after")}; sleep 600`;
  tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", "sh", "-c", script);
  tmux("set-option", "-t", session, "status", "off");
  return { file };
}

const screen = (session: string) => tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", session);
const keys = (session: string, ...k: string[]) => tmux("send-keys", "-t", session, ...k);

async function waitFor(session: string, re: RegExp, ms = 120_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = screen(session);
    const m = re.exec(text);
    if (m) return m[0];
    if (Date.now() > deadline) throw new Error(`no ${re} in the pane; it shows:\n${text}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function waitForFile(f: string, ms = 60_000): Promise<string> {
  const deadline = Date.now() + ms;
  while (!existsSync(f) || readFileSync(f, "utf8") === "") {
    if (Date.now() > deadline) throw new Error(`${f} never appeared`);
    await new Promise((r) => setTimeout(r, 250));
  }
  await new Promise((r) => setTimeout(r, 200));
  return readFileSync(f, "utf8").trim();
}

const paneSize = (session: string) => tmux("display-message", "-p", "-t", session, "#{pane_height} #{pane_width}").trim();

describe.skipIf(!usable)("msb run -it through a real terminal", () => {
  it("runs a shell: keys, size and resizes, Ctrl-C, exit status, and the terminal restored", async () => {
    const s = "run";
    const { file } = start(s, "run -it local:busybox -- sh");
    keys(s, "echo hello-$((6*7))", "Enter");
    await waitFor(s, /^hello-42$/m);
    keys(s, "stty size", "Enter");
    await waitFor(s, new RegExp(`^${paneSize(s)}$`, "m"));
    tmux("resize-window", "-t", s, "-x", "120", "-y", "40");
    keys(s, "clear; stty size", "Enter");
    await waitFor(s, new RegExp(`^${paneSize(s)}$`, "m"));
    keys(s, "sleep 100", "Enter");
    await new Promise((r) => setTimeout(r, 1000));
    keys(s, "C-c");
    keys(s, "echo after-$?", "Enter");
    await waitFor(s, /^after-130$/m);
    keys(s, "exit 3", "Enter");
    expect(await waitForFile(file("rc"))).toBe("3");
    expect(await waitForFile(file("after"))).toBe(await waitForFile(file("before")));
  }, 180_000);

  it("detaches on Ctrl-P Ctrl-Q, stopping the sandbox, with the terminal restored", async () => {
    const s = "detach";
    const { file } = start(s, "run -it local:busybox -- sh");
    keys(s, "echo ready-$((1+1))", "Enter");
    await waitFor(s, /^ready-2$/m);
    keys(s, "C-p", "C-q");
    await waitFor(s, /msb: detached; stopping sandbox/);
    expect(await waitForFile(file("rc"))).toBe("0");
    expect(await waitForFile(file("after"))).toBe(await waitForFile(file("before")));
  }, 180_000);
});

describe.skipIf(!usable)("msb shell", () => {
  it("pauses the sandbox when the shell exits and resumes it, files and all, next time", async () => {
    const name = `shell-${randomBytes(3).toString("hex")}`;
    const first = start("shell1", `shell ${name} --image local:busybox --memory 128`);
    keys("shell1", `echo kept-state > /root/note; echo wrote-$((2*3))`, "Enter");
    await waitFor("shell1", /^wrote-6$/m);
    keys("shell1", "exit", "Enter");
    await waitFor("shell1", new RegExp(`sandbox ${name} paused: msb shell ${name} resumes it`));
    expect(await waitForFile(first.file("rc"))).toBe("0");
    expect(await waitForFile(first.file("after"))).toBe(await waitForFile(first.file("before")));

    const second = start("shell2", `shell ${name} --stop`);
    keys("shell2", "cat /root/note", "Enter");
    await waitFor("shell2", /^kept-state$/m);
    keys("shell2", "exit", "Enter");
    expect(await waitForFile(second.file("rc"))).toBe("0");
    // Stopped, not paused: nothing is left to resume.
    const third = spawnSync(process.execPath, [MSB, "shell", name], { encoding: "utf8" });
    expect(third.status).toBe(1);
    expect(third.stderr).toMatch(/no paused sandbox named .* give --image IMAGE/);
  }, 240_000);
});
