// Pausing and resuming an E2B sandbox, whoever asks: the pause route, its timeout when its
// lifecycle says onTimeout "pause", connect, and (with autoResume) a data-plane request.
import { rmSync } from "node:fs";
import { InvalidArgumentError } from "../../errors.js";
import { SANDBOX_KINDS } from "../catalog.js";
import { ConflictError, NotFoundError } from "../errors.js";
import type { SandboxTable } from "../sandboxes.js";
import { contextRecords, linkContexts } from "./interpreter.js";
import { ProcessTable } from "./processes.js";
import { type E2bSandbox, type E2bState, type Lifecycle, settled, transition } from "./shared.js";

// Waits until no pause or resume is under way, checked in the caller's own turn: a check and the
// transition it starts then happen with nothing between them.
async function idle(s: E2bState): Promise<void> {
  do await settled(s);
  while (s.transition);
}

/**
 * Pauses the running sandbox: saved to disk (without `keepMemory`, its files only) and stopped, it
 * waits for a resume, not for its timeout.
 */
export async function pauseSandbox(table: SandboxTable, { m, s }: E2bSandbox, keepMemory: boolean): Promise<void> {
  await idle(s);
  if (s.paused) throw new ConflictError(`sandbox ${m.id} is already paused: connect to it to resume it`);
  await transition(s, async () => {
    // A memory pause keeps the client's processes (spawned with `keep`) for the resume.
    if (keepMemory) s.processes.hold();
    let dir = "";
    try {
      await table.pause(m, async () => {
        dir = await m.sandbox.pause({ keepMemory });
      });
    } catch (err) {
      if (dir) rmSync(dir, { recursive: true, force: true }); // paused, but killed meanwhile
      s.processes.release();
      throw err;
    }
    s.paused = { name: m.sandbox.name, memory: keepMemory };
    // Paused, it waits for a connect, not for its timeout; killed, its saved state and processes go too.
    clearTimeout(m.timer);
    const processes = s.processes;
    m.discard = () => {
      rmSync(dir, { recursive: true, force: true });
      processes.release();
    };
    if (!keepMemory) {
      s.processes = new ProcessTable();
      // Their interpreters did not survive a pause of the files alone (a memory pause keeps them).
      s.contexts.clear();
      s.defaults.clear();
    }
    table.persist(m); // paused, for the next server on this cache
  });
}

/**
 * Resumes the sandbox if it is paused (true), else leaves it as it is (false); either way it
 * lives `timeoutS` from now. `memory: false` (E2B's onResume "reboot") asks for a boot from its
 * files alone, which only a sandbox paused without its memory can have: the memory of the other
 * kind holds its files too.
 */
export async function resumeSandbox(table: SandboxTable, { m, s }: E2bSandbox, timeoutS: number, memory = true): Promise<boolean> {
  await idle(s);
  const paused = s.paused;
  if (paused?.memory && !memory) {
    throw new InvalidArgumentError(
      `sandbox ${m.id} was paused with its memory, which holds its files too, so it cannot boot from its files alone: connect without onResume "reboot", or pause with keepMemory: false`,
    );
  }
  if (paused) {
    await transition(s, () =>
      table.resume(m, async () => {
        const resumed = await SANDBOX_KINDS[m.kind].resume(paused.name);
        // Killed while it resumed (the table let it go, with its saved state): the new VM goes too.
        if (table.byId(m.id) !== m) {
          await resumed.stop();
          throw new NotFoundError(`sandbox ${m.id} was killed while it resumed`);
        }
        m.sandbox = resumed;
        linkContexts(s, resumed, contextRecords(s));
        const kept = m.sandbox.command.resumed();
        s.processes.release(kept);
        await s.processes.takeBack(kept); // those a previous server kept through the pause
        delete s.paused;
        delete m.discard;
      }),
    );
  }
  table.setTimeout(m, timeoutS);
  return paused !== undefined;
}

/** Makes the sandbox's timeout do what its lifecycle says: pause it rather than kill it. */
export function armLifecycle(table: SandboxTable, sb: E2bSandbox): void {
  if (sb.s.lifecycle.onTimeout === "pause") sb.m.onTimeout = () => pauseSandbox(table, sb, sb.s.lifecycle.keepMemory);
}

/** `value` of the body's `key`: a boolean, or undefined when not given. */
export function flag(key: string, value: unknown): boolean | undefined {
  if (value === undefined || typeof value === "boolean") return value;
  throw new InvalidArgumentError(`${key} ${JSON.stringify(value)} is invalid: give true or false`);
}

/**
 * The lifecycle a create's body asks for (autoPause, autoPauseMemory, autoResume: the SDK's
 * `lifecycle` as it sends it); `timeoutS` its timeout.
 */
export function lifecycleOf(body: Record<string, unknown>, timeoutS: number): Lifecycle {
  const autoPause = flag("autoPause", body.autoPause);
  const keepMemory = flag("autoPauseMemory", body.autoPauseMemory) ?? true;
  const { autoResume } = body;
  const resume = autoResume as { enabled?: unknown } | undefined;
  if (resume !== undefined && !(resume && typeof resume === "object" && typeof resume.enabled === "boolean"))
    throw new InvalidArgumentError(`autoResume ${JSON.stringify(autoResume)} is invalid: give { enabled: true } or { enabled: false }`);
  if (resume?.enabled && !autoPause)
    throw new InvalidArgumentError('autoResume needs a sandbox that pauses on its timeout: give lifecycle { onTimeout: "pause", autoResume: true }');
  if (resume?.enabled && !keepMemory)
    throw new InvalidArgumentError("autoResume needs a pause that keeps the memory: a files-only pause (keepMemory: false) is resumed with connect");
  return { onTimeout: autoPause ? "pause" : "kill", autoResume: resume?.enabled === true, keepMemory, timeoutS };
}
