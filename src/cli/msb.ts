#!/usr/bin/env node
// msb: the command line. Finds the command in the table (commands.ts), parses its arguments
// strictly against that command's options alone, and runs it; or prints help.
// Exit status: the command's own; 1 if it failed; 2 for a usage error.
import { parseArgs } from "node:util";

import { MicrosandboxError } from "../errors.js";
import { COMMANDS, type Command, commandUsage, generalUsage, type Invocation, NUMBER_KINDS, type Values } from "./commands.js";

/** A mistake on the command line: reported with `msb: ` and exit status 2, before any work. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly usage?: string,
  ) {
    super(message);
  }
}

const seeHelp = (cmd: Command) => `for "msb ${cmd.name}"; see msb ${cmd.name} --help`;

// parseArgs's own errors name the option in quotes; say it our way, with where to look.
function parseError(cmd: Command, err: unknown): unknown {
  const e = err as { code?: string; message?: string };
  const option = /'(-[^' ]*)/.exec(e.message ?? "")?.[1];
  if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    // msb run IMAGE sh -c ...: the guest's own flags land here when -- was left out.
    const hint = cmd.takesCommand ? "; the command to run and its arguments go after --" : "";
    return new UsageError(`unknown option ${option} ${seeHelp(cmd)}${hint}`);
  }
  if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    const spec = cmd.options[option?.replace(/^--/, "") ?? ""];
    if (spec?.type === "boolean" || option === "--help") return new UsageError(`option ${option} takes no value ${seeHelp(cmd)}`);
    // "--runs -3": parseArgs will not guess that a dash-led word is a value.
    if (/ambiguous/.test(e.message ?? "")) return new UsageError(`option ${option} needs a value; for one starting with "-" write ${option}=VALUE`);
    return new UsageError(`option ${option} needs a value ${seeHelp(cmd)}`);
  }
  return err;
}

/** Parses a command's arguments; null when --help was asked for. Throws UsageError. */
function parse(cmd: Command, args: string[]): Invocation | null {
  // Only a command that runs a guest command splits at `--`; the rest leave it to parseArgs,
  // which takes what follows as positionals (msb rmi -- -odd-name).
  const sep = cmd.takesCommand ? args.indexOf("--") : -1;
  let parsed: { values: Record<string, string | string[] | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: sep === -1 ? args : args.slice(0, sep),
      strict: true,
      allowPositionals: true,
      options: {
        ...Object.fromEntries(
          Object.entries(cmd.options).map(([name, o]) => [
            name,
            { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) },
          ]),
        ),
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw parseError(cmd, err);
  }
  if (parsed.values.help) return null;

  const values: Values = {};
  for (const [name, raw] of Object.entries(parsed.values)) {
    const spec = cmd.options[name]!;
    if (typeof raw !== "string") values[name] = raw;
    else if (spec.number) {
      const n = raw.trim() === "" ? NaN : Number(raw);
      if (!Number.isFinite(n) || !NUMBER_KINDS[spec.number](n)) throw new UsageError(`--${name} must be ${spec.number}, got ${JSON.stringify(raw)}`);
      values[name] = n;
    } else if (spec.choices && !spec.choices.includes(raw)) {
      throw new UsageError(`--${name} must be one of ${spec.choices.join(", ")}, got ${JSON.stringify(raw)}`);
    } else values[name] = raw;
  }

  const { positionals } = parsed;
  const { name, min, max } = cmd.positionals;
  if (positionals.length < min) throw new UsageError(`"msb ${cmd.name}" needs ${name}`, commandUsage(cmd));
  if (positionals.length > max) {
    const hint = cmd.takesCommand ? `; put the command to run after --: msb ${cmd.synopsis}` : `; see msb ${cmd.name} --help`;
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[max])} for "msb ${cmd.name}"${hint}`);
  }
  const command = sep === -1 ? undefined : args.slice(sep + 1);
  if (command?.length === 0) throw new UsageError(`nothing after -- for "msb ${cmd.name}": give a command, or leave out --`);
  return { values, positionals, command };
}

function lookup(name: string): Command {
  const cmd = COMMANDS.get(name);
  if (cmd) return cmd;
  throw new UsageError(name.startsWith("-") ? `unknown option ${name}` : `unknown command ${JSON.stringify(name)}`, generalUsage());
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || (name === "help" && rest.length === 0)) {
    console.log(generalUsage());
    return 0;
  }
  if (name === "help") {
    if (rest.length > 1) throw new UsageError(`"msb help" takes one command, got ${rest.length}`, generalUsage());
    console.log(commandUsage(lookup(rest[0]!)));
    return 0;
  }
  const cmd = lookup(name);
  const invocation = parse(cmd, rest);
  if (!invocation) {
    console.log(commandUsage(cmd));
    return 0;
  }
  return cmd.handler(invocation);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UsageError) {
      console.error(`msb: ${err.message}`);
      if (err.usage) console.error(`\n${err.usage}`);
      process.exit(2);
    }
    console.error(`msb: ${err instanceof MicrosandboxError ? err.message : String((err as Error)?.stack ?? err)}`);
    process.exit(1);
  },
);
