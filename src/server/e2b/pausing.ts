// Pausing and resuming an E2B sandbox, whoever asks: the pause route, its timeout when its
// lifecycle says onTimeout "pause", connect, and (with autoResume) a data-plane request.
import { rmSync } from "node:fs";
import { InvalidArgumentError } from "../../errors.js";
import { SANDBOX_KINDS } from "../catalog.js";
import { ConflictError } from "../errors.js";
import type { SandboxTable } from "../sandboxes.js";
import { ProcessTable } from "./processes.js";
import { type E2bSandbox, type E2bState, type Lifecycle, settled, transition } from "./shared.js";

// Waits until no pause or resume is under way, checked in the caller's own turn: a check and the
// transition it starts then happen with nothing between them.
async function idle(s: E2bState): Promise<void> {
  do await settled(s);
  while (s.transition);
}

/** Pauses the running sandbox: saved to disk and stopped, it waits for a resume, not for its timeout. */
export async function pauseSandbox({ m, s }: E2bSandbox): Promise<void> {
  await idle(s);
  if (s.paused) throw new ConflictError(`sandbox ${m.id} is already paused: connect to it to resume it`);
  await transition(s, async () => {
    const dir = await m.sandbox.pause();
    s.paused = { name: m.sandbox.name };
    // Paused, it waits for a connect, not for its timeout; killed, its saved state goes too.
    clearTimeout(m.timer);
    m.discard = () => rmSync(dir, { recursive: true, force: true });
    s.processes = new ProcessTable();
    s.contexts.clear(); // their interpreters did not survive the pause
    s.defaults.clear();
  });
}

/**
 * Resumes the sandbox if it is paused (true), else leaves it as it is (false); either way it
 * lives `timeoutS` from now.
 */
export async function resumeSandbox(table: SandboxTable, { m, s }: E2bSandbox, timeoutS: number): Promise<boolean> {
  await idle(s);
  const paused = s.paused;
  if (paused) {
    await transition(s, async () => {
      m.sandbox = await SANDBOX_KINDS[m.kind].resume(paused.name);
      delete s.paused;
      delete m.discard;
    });
  }
  table.setTimeout(m, timeoutS);
  return paused !== undefined;
}

/** Makes the sandbox's timeout do what its lifecycle says: pause it rather than kill it. */
export function armLifecycle(sb: E2bSandbox): void {
  if (sb.s.lifecycle.onTimeout === "pause") sb.m.onTimeout = () => pauseSandbox(sb);
}

/** The lifecycle a create's body asks for (autoPause, autoResume, as the SDK sends its `lifecycle`); `timeoutS` its timeout. */
export function lifecycleOf(body: Record<string, unknown>, timeoutS: number): Lifecycle {
  const { autoPause, autoResume } = body;
  if (autoPause !== undefined && typeof autoPause !== "boolean")
    throw new InvalidArgumentError(`autoPause ${JSON.stringify(autoPause)} is invalid: give true or false`);
  const resume = autoResume as { enabled?: unknown } | undefined;
  if (resume !== undefined && !(resume && typeof resume === "object" && typeof resume.enabled === "boolean"))
    throw new InvalidArgumentError(`autoResume ${JSON.stringify(autoResume)} is invalid: give { enabled: true } or { enabled: false }`);
  if (resume?.enabled && !autoPause)
    throw new InvalidArgumentError('autoResume needs a sandbox that pauses on its timeout: give lifecycle { onTimeout: "pause", autoResume: true }');
  return { onTimeout: autoPause ? "pause" : "kill", autoResume: resume?.enabled === true, timeoutS };
}
