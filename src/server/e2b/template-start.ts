// What a sandbox of a built template runs when it starts, as E2B's templates do: the start
// command in the background (kept across a pause), then the ready command, again and again, until
// it succeeds; create answers only then, or fails past a bound.
import { TimeoutError } from "../../errors.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import type { E2bSandbox } from "./shared.js";
import type { StartCommands } from "./template-store.js";

const RETRY_MS = 500;

/**
 * Starts `c`'s start command in `sb` (one of its processes, as the client's are: commands.list()
 * shows it) and waits for its ready command; TimeoutError when it is not ready in time.
 */
export async function runStartCommands({ m, s }: E2bSandbox, c: StartCommands, timeoutS = SERVER_DEFAULTS.e2b.readyTimeoutS): Promise<void> {
  const { sandbox } = m;
  if (c.startCmd) {
    const args = ["-c", c.startCmd];
    const t = await s.processes.add(sandbox.command.spawn("/bin/sh", args, { keep: true }), { cmd: "/bin/sh", args, envs: {}, pty: false });
    // Its output is read (into the sandbox's log) so it never waits on a reader.
    void (async () => {
      for await (const _ of t.watch());
    })().catch(() => {}); // the sandbox went away
  }
  if (!c.readyCmd) return;
  const deadline = Date.now() + timeoutS * 1000;
  let last = "";
  for (;;) {
    const left = Math.ceil((deadline - Date.now()) / 1000);
    if (left <= 0) break;
    const r = await sandbox.command.run("/bin/sh", ["-c", c.readyCmd], { timeout: left }).catch((err: unknown) => {
      if (err instanceof TimeoutError) return undefined;
      throw err;
    });
    if (r?.exitCode === 0) return;
    if (r) last = `${r.stdout}${r.stderr}`.trim().slice(-500);
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
  throw new TimeoutError(
    `template ${JSON.stringify(m.template)}'s ready command (${c.readyCmd}) did not succeed within ${timeoutS} s${last ? `; its last output: ${last}` : ""}: check its start command (${c.startCmd ?? "none"})`,
  );
}
