// Results of run() and command.run(), shaped like the Microsandbox SDKs: output() and error()
// are async there (the server SDKs fetch them), and stay async here for the same code to work.
// They return the text as lines joined by "\n", like the SDKs (so "4", not "4\n"); the exact
// bytes are in `stdout` / `stderr`.

const joined = (text: string) => (text.endsWith("\n") ? text.slice(0, -1) : text);

export type ExecutionStatus = "success" | "error";

/** The result of run(code): what the interpreter printed, and whether the code raised. */
export class Execution {
  constructor(
    readonly language: string,
    readonly status: ExecutionStatus,
    /** Exactly what the code wrote to stdout. */
    readonly stdout: string,
    /** Exactly what the code wrote to stderr. */
    readonly stderr: string,
    /** The exception's class name ("ZeroDivisionError") when the code raised. */
    readonly errorName?: string,
    /** The final expression's value as the prompt shows it (also echoed in stdout): Python's repr, Node's util.inspect; none for None, undefined or bash. */
    readonly result?: string,
    /** What the error says ("division by zero"; bash: "exit status 1") when the code raised. */
    readonly errorValue?: string,
  ) {}

  /** Everything the code wrote to stdout, including echoed expression values. */
  async output(): Promise<string> {
    return joined(this.stdout);
  }

  /** Everything written to stderr, including the traceback of an exception. */
  async error(): Promise<string> {
    return joined(this.stderr);
  }

  /** True when the code raised (the traceback is in error()). */
  hasError(): boolean {
    return this.status === "error";
  }
}

/** The result of command.run(): output and exit status of a finished process. */
export class CommandExecution {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    /** Exit code, or null when a signal ended the process (see `signal`). */
    readonly exitCode: number | null,
    readonly signal: string | null,
    /** Exactly what the process wrote to stdout. */
    readonly stdout: string,
    /** Exactly what the process wrote to stderr. */
    readonly stderr: string,
    readonly durationMs: number,
    /** CPU time of the command's whole process tree, and its largest resident set (see ExitStatus.usage). */
    readonly usage: { cpuTimeMs: number; peakMemoryBytes: number } = { cpuTimeMs: 0, peakMemoryBytes: 0 },
  ) {}

  /** The process exited with code 0. */
  get success(): boolean {
    return this.exitCode === 0;
  }

  async output(): Promise<string> {
    return joined(this.stdout);
  }

  async error(): Promise<string> {
    return joined(this.stderr);
  }

  hasError(): boolean {
    return !this.success;
  }
}
