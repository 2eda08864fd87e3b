// The sandbox kinds: Python and Node, with a persistent interpreter behind run() and any number
// of others (interpreter()) that snapshots, copies, pauses and adoptions carry along, and
// CustomSandbox for any image.
import { createHash, randomBytes } from "node:crypto";

import type { AgentClient } from "../agent-client/client.js";
import { InvalidArgumentError } from "../errors.js";
import type { ImageConfig } from "../images/store.js";
import type { KeptSession } from "../vm/machine.js";
import { type RunOptions, runTimeout } from "./commands.js";
import type { Execution } from "./execution.js";
import type { SandboxOptions } from "./options.js";
import { driverSource, NODE_REPL, PYTHON_REPL, REPL_LANGUAGES, Repl, type ReplLanguage } from "./repl.js";
import { Sandbox } from "./sandbox.js";

/** An interpreter of its own in a sandbox (interpreter()), with state of its own. */
export interface Interpreter {
  /** Names it across a fork, pause or adoption of its sandbox (interpreters()). */
  readonly id: string;
  readonly language: ReplLanguage["language"];
  run(code: string, opts?: RunOptions): Promise<Execution>;
  /** Ends it. */
  close(): void;
}

/** A kept interpreter session: run()'s, or with `interpreter` one of interpreter()'s. */
interface KeptRepl extends KeptSession {
  interpreter?: { id: string; language: string };
}

const INTERPRETER_ID = /^[0-9a-f]{16}$/;

abstract class LanguageSandbox extends Sandbox {
  private repl: Repl | undefined;
  private readonly others = new Map<string, { handle: Interpreter; repl: Repl }>();
  protected abstract readonly language: ReplLanguage;

  protected override keptSessions(): KeptRepl[] {
    const main = this.repl?.kept();
    const others = [...this.others].flatMap(([id, { handle, repl }]) => {
      const kept = repl.kept();
      return kept ? [{ ...kept, interpreter: { id, language: handle.language } }] : [];
    });
    return [...(main ? [main] : []), ...others];
  }

  // An interpreter's session stays open between cells: that is not work under way.
  protected override idleSessions(): number {
    return this.keptSessions().length;
  }

  protected override adopt(kept: KeptRepl[]): void {
    let main = false;
    for (const k of kept) {
      const i = k.interpreter;
      if (i === undefined && !main) {
        main = true;
        this.replFor().adopt(k);
      } else if (INTERPRETER_ID.test(i?.id ?? "") && Object.hasOwn(REPL_LANGUAGES, i!.language) && !this.others.has(i!.id)) {
        const language = i!.language as ReplLanguage["language"];
        this.track(
          i!.id,
          language,
          this.newRepl(REPL_LANGUAGES[language], () => this.agent()),
        ).adopt(k);
      } else {
        // Kept by the VM but not one of ours (a damaged record): ended, not left running untracked.
        this.agent().adopt(k.session, k.pid).kill("SIGKILL");
      }
    }
  }

  /** The language of run()'s interpreter. */
  get interpreterLanguage(): ReplLanguage["language"] {
    return this.language.language;
  }

  private replFor(): Repl {
    this.repl ??= this.newRepl(this.language, () => this.agent());
    return this.repl;
  }

  private newRepl(language: ReplLanguage, agent: () => AgentClient): Repl {
    return new Repl(language, {
      agent,
      processOptions: () => this.processOptions({}, undefined),
      exhausted: (what, counters) => this.exhausted(what, counters),
      keptChanged: () => this.recordChanged(),
    });
  }

  /**
   * The template also starts the interpreter (with this sandbox's environment, which goes into the
   * snapshot's key): every clone's first run() finds it loaded.
   */
  protected override templatePrewarm(image: ImageConfig): { prewarmName: string; prewarm(agent: AgentClient): Promise<KeptSession[]> } {
    const shell = super.templatePrewarm(image);
    // A snapshot's interpreter is this driver, started with these settings.
    const settings = createHash("sha256")
      .update(JSON.stringify(this.processOptions({}, undefined)))
      .update(driverSource(this.language))
      .digest("hex")
      .slice(0, 16);
    return {
      prewarmName: `${shell.prewarmName}+${this.language.language}:${settings}`,
      prewarm: async (agent) => {
        await shell.prewarm(agent);
        const repl = this.newRepl(this.language, () => agent);
        await repl.run("None");
        return [repl.kept()!];
      },
    };
  }

  /**
   * Runs code in the sandbox's persistent interpreter: state survives between calls, and the value
   * of a final expression is echoed like the interactive prompt. An exception does not throw: it
   * makes hasError() true with the traceback in error().
   */
  async run(code: string, opts: RunOptions = {}): Promise<Execution> {
    if (typeof code !== "string") throw new InvalidArgumentError(`code must be a string, got ${typeof code}`);
    const timeout = runTimeout(opts);
    this.agent(); // not running: fail before queueing
    return this.replFor().run(code, timeout);
  }

  /**
   * Another interpreter in this sandbox, with state of its own (a notebook's contexts); close()
   * ends it. The sandbox's own run() interpreter is not this one. `language` (default: the
   * sandbox's own) may be any of REPL_LANGUAGES whose program the image has: python3, node or
   * bash; when it lacks it, the first run() throws an ExecError (ENOENT). One that has run and
   * is between cells goes along with a fork, pause or adoption of the sandbox, under its id.
   */
  interpreter(language: ReplLanguage["language"] = this.language.language): Interpreter {
    if (!Object.hasOwn(REPL_LANGUAGES, language))
      throw new InvalidArgumentError(`language ${JSON.stringify(language)} has no interpreter: use ${Object.keys(REPL_LANGUAGES).join(", ")}`);
    return this.track(
      randomBytes(8).toString("hex"),
      language,
      this.newRepl(REPL_LANGUAGES[language], () => this.agent()),
    ).handle;
  }

  /** The interpreters interpreter() made that are open: this sandbox's own, or carried over to it. */
  interpreters(): Interpreter[] {
    return [...this.others.values()].map((o) => o.handle);
  }

  private track(id: string, language: ReplLanguage["language"], repl: Repl): { handle: Interpreter; adopt(k: KeptSession): void } {
    let closed = false;
    const handle: Interpreter = {
      id,
      language,
      run: (code, opts = {}) =>
        closed ? Promise.reject(new InvalidArgumentError(`interpreter ${id} was closed: make another with interpreter()`)) : repl.run(code, runTimeout(opts)),
      close: () => {
        closed = true;
        repl.reset();
        this.others.delete(id);
        this.recordChanged(); // an outliving sandbox's record no longer carries it
      },
    };
    this.others.set(id, { handle, repl });
    return { handle, adopt: (k) => repl.adopt(k) };
  }

  protected override onStop(): void {
    this.repl?.reset();
    this.repl = undefined;
    for (const { repl } of this.others.values()) repl.reset();
    this.others.clear();
  }

  /** @internal A pooled interpreter sandbox hands out its interpreter already running. */
  override async prewarm(): Promise<void> {
    await super.prewarm();
    await this.run("None").catch(() => {});
  }
}

/** A sandbox with a persistent Python interpreter (image python:3.12-slim by default, or MSB_PYTHON_IMAGE). */
export class PythonSandbox extends LanguageSandbox {
  protected readonly language = PYTHON_REPL;
  constructor(opts: SandboxOptions = {}) {
    super(opts, process.env.MSB_PYTHON_IMAGE ?? "python:3.12-slim");
  }
}

/** A sandbox with a persistent Node.js interpreter (image node:22-slim by default, or MSB_NODE_IMAGE). */
export class NodeSandbox extends LanguageSandbox {
  protected readonly language = NODE_REPL;
  constructor(opts: SandboxOptions = {}) {
    super(opts, process.env.MSB_NODE_IMAGE ?? "node:22-slim");
  }
}

/** A sandbox from any image: commands and files, no interpreter. `image` is required. */
export class CustomSandbox extends Sandbox {
  constructor(opts: SandboxOptions = {}) {
    super(opts, undefined);
  }
}
