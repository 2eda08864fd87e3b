// What clients ask for, to what the server boots: one table from an E2B template id or a
// Microsandbox image name to an image and the kind of sandbox made from it. The kind, never the
// image's name, decides whether a sandbox has an interpreter (E2B's /execute, JSON-RPC's
// sandbox.repl.run).
import { InvalidArgumentError } from "../errors.js";
import { checkKeys, keysOf, nearest } from "../keys.js";
import { CustomSandbox, NodeSandbox, PythonSandbox } from "../sandbox/kinds.js";
import { BUILTIN_IMAGES, BUILTIN_TEMPLATES } from "./defaults.js";
import type { Managed } from "./sandboxes.js";

/** The sandbox classes the server makes, by the names its options give them. */
export const SANDBOX_KINDS = { PythonSandbox, NodeSandbox, CustomSandbox } as const;
export type SandboxKind = keyof typeof SANDBOX_KINDS;

/** What a name stands for: the image a sandbox boots, and the class it is made as. */
export interface ImageEntry {
  image: string;
  kind: SandboxKind;
}

/**
 * A name's entry in the server's options: `{ image, kind }`, or a bare image reference. A bare
 * string under a built-in name keeps that name's kind (`"microsandbox/python": "python:3.12"` is
 * still a PythonSandbox); under any other name it is a CustomSandbox, which runs commands and has
 * files but no interpreter.
 */
export type ImageOption = string | ImageEntry;

const ENTRY_KEYS = keysOf<ImageEntry>({ image: true, kind: true });
const KINDS = Object.keys(SANDBOX_KINDS) as SandboxKind[];

// The languages of sandbox.repl.run and /execute, and the kind whose interpreter runs each.
const INTERPRETERS: Readonly<Record<string, SandboxKind>> = { python: "PythonSandbox", javascript: "NodeSandbox", nodejs: "NodeSandbox" };

export class ImageCatalog {
  private readonly images: ReadonlyMap<string, ImageEntry>;
  private readonly templates: ReadonlyMap<string, ImageEntry>;

  /** Checks the options' entries: a bad one is an InvalidArgumentError naming it. */
  constructor(opts: { images?: Record<string, ImageOption> | undefined; templates?: Record<string, ImageOption> | undefined }) {
    this.images = table("images", BUILTIN_IMAGES, opts.images);
    this.templates = table("e2b.templates", BUILTIN_TEMPLATES, opts.templates);
  }

  /** A Microsandbox client's image name: one this server knows, else an image reference (a CustomSandbox). */
  image(name: string): ImageEntry {
    return this.images.get(name) ?? { image: name, kind: "CustomSandbox" };
  }

  /** An E2B template id: a template, else an image name this server knows, else an image reference (a CustomSandbox). */
  template(id: string): ImageEntry {
    return this.templates.get(id) ?? this.image(id);
  }

  /** Whether `id` is one of this server's own templates (built-in or in its options). */
  knows(id: string): boolean {
    return this.templates.has(id);
  }

  /**
   * `m`'s sandbox, for running `language` in its interpreter; an InvalidArgumentError when the
   * language is unknown or `m`'s kind has no interpreter for it, naming what would.
   */
  interpreterOf(m: Managed, language: string): PythonSandbox | NodeSandbox {
    const kind = Object.hasOwn(INTERPRETERS, language) ? INTERPRETERS[language] : undefined;
    if (!kind) throw new InvalidArgumentError(`language ${JSON.stringify(language)} has no interpreter here: use ${Object.keys(INTERPRETERS).join(", ")}`);
    if (m.kind !== kind) throw this.noInterpreter(m, language, kind);
    // The table made it from SANDBOX_KINDS[m.kind], which is the kind the language needs.
    return m.sandbox as PythonSandbox | NodeSandbox;
  }

  /**
   * `m`'s sandbox, for a code interpreter context in `language` (E2B's /execute): any kind with an
   * interpreter starts interpreters of every language its image has the program of. An
   * InvalidArgumentError when `m`'s kind has none, naming what would.
   */
  codeInterpreterOf(m: Managed, language: string): PythonSandbox | NodeSandbox {
    if (m.kind === "PythonSandbox" || m.kind === "NodeSandbox") return m.sandbox as PythonSandbox | NodeSandbox;
    throw this.noInterpreter(m, language, INTERPRETERS[language] ?? "PythonSandbox");
  }

  /** The names whose sandboxes are of `kind`: "microsandbox/node", "template code-interpreter-v1". */
  namesOfKind(kind: SandboxKind): string[] {
    return [
      ...[...this.images].filter(([, e]) => e.kind === kind).map(([n]) => n),
      ...[...this.templates].filter(([, e]) => e.kind === kind).map(([n]) => `template ${n}`),
    ];
  }

  private noInterpreter(m: Managed, language: string, kind: SandboxKind): InvalidArgumentError {
    const names = this.namesOfKind(kind);
    return new InvalidArgumentError(
      `sandbox ${m.name} is a ${m.kind} (from ${JSON.stringify(m.template)}), which has no ${language} interpreter: start one from a name whose kind is ${kind}` +
        `${names.length ? ` (${names.join(", ")})` : ""}, or give its image that kind in the server's options: { image, kind: "${kind}" }`,
    );
  }
}

// Built-in entries overlaid with the options' own.
function table(option: string, builtins: Readonly<Record<string, ImageEntry>>, given: Record<string, ImageOption> | undefined): Map<string, ImageEntry> {
  const all = new Map(Object.entries(builtins));
  if (given === undefined) return all;
  if (given === null || typeof given !== "object" || Array.isArray(given)) {
    throw new InvalidArgumentError(`server option ${option} ${JSON.stringify(given)} is invalid: give an object of names to images`);
  }
  for (const [name, v] of Object.entries(given)) all.set(name, entryOf(`${option}[${JSON.stringify(name)}]`, v, builtins[name]?.kind ?? "CustomSandbox"));
  return all;
}

function entryOf(what: string, v: unknown, bareKind: SandboxKind): ImageEntry {
  if (typeof v === "string" && v) return { image: v, kind: bareKind };
  if (!v || typeof v !== "object" || Array.isArray(v)) {
    throw new InvalidArgumentError(`server option ${what} ${JSON.stringify(v)} is invalid: give an image reference, or { image, kind }`);
  }
  checkKeys(`server option ${what} key`, v, ENTRY_KEYS);
  const { image, kind } = v as Record<string, unknown>;
  if (typeof image !== "string" || !image)
    throw new InvalidArgumentError(`server option ${what}.image ${JSON.stringify(image)} is invalid: name an image, such as "local:python"`);
  if (typeof kind !== "string" || !(KINDS as string[]).includes(kind)) {
    const near = typeof kind === "string" ? nearest(kind, KINDS) : undefined;
    throw new InvalidArgumentError(
      `server option ${what}.kind ${JSON.stringify(kind)} is invalid${near ? `: did you mean ${JSON.stringify(near)}?` : ""} (the kinds are ${KINDS.join(", ")})`,
    );
  }
  return { image, kind: kind as SandboxKind };
}
