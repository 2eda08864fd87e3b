// The shape of msb's command table (commands.ts, server-commands.ts): each command's options
// and handler, and the column layout the help and listings share.
/** How a numeric option's value is checked; the words are also the error message's. */
export const NUMBER_KINDS = {
  "a whole number >= 1": (n: number) => Number.isInteger(n) && n >= 1,
  "a number > 0": (n: number) => n > 0,
  "a number >= 0": (n: number) => n >= 0,
} as const;

export interface OptionSpec {
  type: "boolean" | "string";
  /** A one-letter alias (-i); letters may be grouped (-it). */
  short?: string;
  /** The value's name in the help text, e.g. "N"; choices are shown instead where given. */
  value?: string;
  description: string;
  default?: string;
  /** The value must be a number of this kind; the handler gets a number. */
  number?: keyof typeof NUMBER_KINDS;
  /** The value must be one of these. */
  choices?: readonly string[];
  /** May be given more than once; the handler gets every value, in order. */
  multiple?: boolean;
}

export type Values = Record<string, string | string[] | number | boolean | undefined>;

export interface Invocation {
  values: Values;
  positionals: string[];
  /** What followed `--`, for a command that takes one (run); undefined without `--`. */
  command: string[] | undefined;
}

export interface Command {
  name: string;
  /** After "msb ": "pull IMAGE [--insecure]". */
  synopsis: string;
  /** One line for the list of commands. */
  summary: string;
  description: string;
  options: Record<string, OptionSpec>;
  /** The positionals' name for messages, and how many may be given. */
  positionals: { name?: string; min: number; max: number };
  /** Everything after `--` is the guest's command line, untouched. */
  takesCommand?: boolean;
  handler(inv: Invocation): Promise<number>;
}

/** Two columns, the left padded to its widest entry. */
export const column = (rows: [string, string][]) => {
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  return rows.map(([left, right]) => `  ${left.padEnd(width)}${right}`).join("\n");
};
