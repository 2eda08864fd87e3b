// Attaching this process's terminal to a process in a sandbox (msb run -it, msb shell): raw mode
// on our terminal so every key, Ctrl-C included, reaches the guest's terminal; our size follows
// it; Ctrl-P Ctrl-Q detaches. Raw mode is undone on every way out: the process's end, a detach,
// an error, and this process being signalled or exiting.
import type { ExecProcess, ExitStatus } from "../agent-client/process.js";

export const DETACH_KEYS = "Ctrl-P Ctrl-Q";
const CTRL_P = 0x10;
const CTRL_Q = 0x11;

export interface Attached {
  /** The process's end; undefined when the user detached first. */
  exit?: ExitStatus;
}

/** The terminal size to start a pty with: ours, else 24x80. */
export function terminalSize(out: NodeJS.WriteStream = process.stdout): { rows: number; cols: number } {
  return { rows: out.isTTY && out.rows ? out.rows : 24, cols: out.isTTY && out.columns ? out.columns : 80 };
}

// Passes keys on, holding a Ctrl-P back until the next key says whether it starts the detach pair.
function detachFilter(onDetach: () => void): (chunk: Buffer) => Buffer {
  let held = false;
  return (chunk) => {
    const out: number[] = [];
    for (const b of chunk) {
      if (held) {
        held = false;
        if (b === CTRL_Q) {
          onDetach();
          return Buffer.from(out);
        }
        out.push(CTRL_P);
      }
      if (b === CTRL_P) held = true;
      else out.push(b);
    }
    return Buffer.from(out);
  };
}

/**
 * Connects stdin, stdout and the terminal size to `proc` (spawned with a pty when `tty`, with
 * stdin otherwise) until it ends or the user detaches.
 */
export async function attach(
  proc: ExecProcess,
  tty: boolean,
  stdin: NodeJS.ReadStream = process.stdin,
  stdout: NodeJS.WriteStream = process.stdout,
): Promise<Attached> {
  const raw = tty && stdin.isTTY;
  let detach!: () => void;
  const detached = new Promise<void>((resolve) => (detach = resolve));
  const filter = tty ? detachFilter(() => detach()) : (b: Buffer) => b;
  const onData = (chunk: Buffer) => {
    const keys = filter(chunk);
    if (keys.length) proc.write(keys).catch(() => {}); // a process that ended takes no more input
  };
  const onEnd = () => void proc.end().catch(() => {});
  const onResize = () => {
    const { rows, cols } = terminalSize(stdout);
    try {
      proc.resize(rows, cols);
    } catch {
      // the process ended meanwhile
    }
  };
  const restore = () => {
    if (raw && stdin.isRaw) stdin.setRawMode(false);
  };
  const onSignal = (signal: NodeJS.Signals) => {
    restore();
    process.kill(process.pid, signal);
  };
  if (raw) stdin.setRawMode(true);
  process.once("exit", restore);
  for (const s of ["SIGTERM", "SIGHUP"] as const) process.once(s, onSignal);
  stdin.on("data", onData);
  if (!tty) stdin.once("end", onEnd);
  if (tty) stdout.on("resize", onResize);
  stdin.resume();
  const output = (async () => {
    for await (const chunk of proc) stdout.write(chunk.data);
  })();
  output.catch(() => {}); // after a detach the sandbox stops under it: that ends it, not an error
  try {
    const ended = await Promise.race([proc.exit.then((exit) => ({ exit })), detached.then(() => undefined)]);
    if (ended) await output; // everything it printed, before we print anything ourselves
    return ended ?? {};
  } finally {
    stdin.off("data", onData);
    stdin.off("end", onEnd);
    stdout.off("resize", onResize);
    for (const s of ["SIGTERM", "SIGHUP"] as const) process.off(s, onSignal);
    process.off("exit", restore);
    restore();
    stdin.pause();
  }
}
