// Template builds as the SDK's Template.build drives them: requested (a template id and a build
// id, waiting for files and steps), given their steps (the build runs in the background, by the
// library's buildImage), and polled for status and log entries until ready or error. A build
// that never starts is forgotten after a while; a finished one is kept for its status and logs
// for a while, then forgotten. Only a ready build makes or changes a template.
import { randomBytes, randomUUID } from "node:crypto";

import { buildImage } from "../../build/builder.js";
import { BuildError, InvalidArgumentError } from "../../errors.js";
import { resolveImage } from "../../images/sources.js";
import { ImageStore } from "../../images/store.js";
import { checkKeys } from "../../keys.js";
import type { ImageCatalog } from "../catalog.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { ConflictError, messageOf, NotFoundError, ServerClosingError, ServerFullError } from "../errors.js";
import { BuildFiles, uploadLimits } from "./template-files.js";
import { type BuildPlan, builderSteps, planBuild } from "./template-steps.js";
import { DEFAULT_TAG, NAME, type StartCommands, splitName, TAG, type TemplateBuild, type TemplateStore } from "./template-store.js";

export type LogLevel = "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
/** A build log entry as the SDK reads it; `step` is the SDK's step number ("base", "1", ...). */
export interface LogEntry {
  timestamp: string;
  level: LogLevel;
  message: string;
  step?: string;
}

export interface Build {
  buildID: string;
  templateID: string;
  owner: string;
  name: string;
  tags: string[];
  status: "waiting" | "building" | "ready" | "error";
  files: BuildFiles;
  logs: LogEntry[];
  reason?: { message: string; step?: string; logEntries: LogEntry[] };
  memory?: number;
  cpus?: number;
  abort: AbortController;
  timer?: NodeJS.Timeout;
  done?: Promise<void>;
}

const REQUEST_KEYS = ["name", "alias", "tags", "cpuCount", "memoryMB", "minFreeDiskMb", "teamID"] as const;
const WAITING_MS = 15 * 60_000; // a build requested and never started
const KEPT_MS = 60 * 60_000; // a finished build's status and logs
const MAX_LOGS = 10_000;
const MAX_LINE = 4096;

export class TemplateBuilds {
  private readonly builds = new Map<string, Build>();
  private readonly images = new ImageStore();
  private closed = false;

  /** `reserve`: room for a build's VM among the server's sandboxes (SandboxTable.reserve). */
  constructor(
    private readonly store: TemplateStore,
    private readonly catalog: ImageCatalog,
    private readonly fileLimit: number,
    private readonly reserve: (memory: number) => () => void,
  ) {}

  /** POST /v3/templates: a new build of the template `body.name` ("name" or "name:tag"), waiting for its files and steps. */
  async request(owner: string, body: Record<string, unknown>) {
    this.open();
    checkKeys("template build request field", body, REQUEST_KEYS);
    const ref = body.name ?? body.alias;
    if (typeof ref !== "string") throw new InvalidArgumentError(`template name ${JSON.stringify(ref)} is invalid: give "name" or "name:tag"`);
    const { name, tag } = splitName(ref);
    if (!NAME.test(name))
      throw new InvalidArgumentError(`template name ${JSON.stringify(name)} is invalid: give lowercase letters, digits, '.', '_' or '-' (at most 63)`);
    if (this.catalog.knows(name))
      throw new InvalidArgumentError(`template name ${JSON.stringify(name)} is one of this server's own templates: choose another name`);
    if (body.tags !== undefined && !(Array.isArray(body.tags) && body.tags.every((t) => typeof t === "string")))
      throw new InvalidArgumentError("template tags must be an array of strings");
    const tags = [...new Set([...(tag !== undefined ? [tag] : []), ...((body.tags as string[] | undefined) ?? [])])];
    if (!tags.length) tags.push(DEFAULT_TAG);
    for (const t of tags)
      if (!TAG.test(t)) throw new InvalidArgumentError(`template tag ${JSON.stringify(t)} is invalid: give letters, digits, '.', '_' or '-'`);
    const memory = positive("memoryMB", body.memoryMB);
    const cpus = positive("cpuCount", body.cpuCount);
    const others = [...this.builds.values()].filter((b) => b.owner === owner && b.name === name);
    if (others.some((b) => b.status === "building")) throw new ConflictError(`template ${JSON.stringify(name)} is being built: wait for that build to end`);
    for (const b of others.filter((o) => o.status === "waiting")) await this.forget(b); // replaced by this one
    const templateID = this.store.find(owner, name)?.templateID ?? others[0]?.templateID ?? randomBytes(10).toString("hex");
    const b: Build = {
      buildID: randomUUID(),
      templateID,
      owner,
      name,
      tags,
      status: "waiting",
      files: new BuildFiles(uploadLimits(this.fileLimit)),
      logs: [],
      abort: new AbortController(),
      ...(memory !== undefined ? { memory } : {}),
      ...(cpus !== undefined ? { cpus } : {}),
    };
    b.timer = setTimeout(() => void this.forget(b), WAITING_MS).unref();
    this.builds.set(b.buildID, b);
    return { templateID, buildID: b.buildID, names: [name], aliases: [name], tags, public: false };
  }

  /** `owner`'s build `buildID` of template `templateID`, or NotFoundError. */
  get(owner: string, templateID: string, buildID: string): Build {
    const b = this.builds.get(buildID);
    if (!b || b.owner !== owner || b.templateID !== templateID)
      throw new NotFoundError(
        `build ${JSON.stringify(buildID)} of template ${JSON.stringify(templateID)} not found (a build's status is kept an hour after it ends)`,
      );
    return b;
  }

  /** The build of `owner`'s template `templateID` that waits for its files, or NotFoundError. */
  waiting(owner: string, templateID: string): Build {
    const b = [...this.builds.values()].find((x) => x.owner === owner && x.templateID === templateID && x.status === "waiting");
    if (!b) throw new NotFoundError(`template ${JSON.stringify(templateID)} has no build waiting for files: request a build first (POST /v3/templates)`);
    return b;
  }

  /** The build of template `templateID` that waits for its files, whoever's it is (an upload's token is its check). */
  uploading(templateID: string): Build {
    const b = [...this.builds.values()].find((x) => x.templateID === templateID && x.status === "waiting");
    if (!b) throw new NotFoundError(`template ${JSON.stringify(templateID)} has no build waiting for files`);
    return b;
  }

  /** POST /v2/templates/:id/builds/:bid: checks the steps (InvalidArgumentError) and runs the build in the background. */
  async start(b: Build, body: Record<string, unknown>): Promise<void> {
    this.open();
    if (b.status !== "waiting") throw new ConflictError(`build ${b.buildID} was started already`);
    if ([...this.builds.values()].filter((x) => x.status === "building").length >= SERVER_DEFAULTS.e2b.maxBuilds)
      throw new ServerFullError(`the server runs its limit of ${SERVER_DEFAULTS.e2b.maxBuilds} template builds: retry later`);
    // The build's VM takes room as a sandbox would: past the server's limits, 429.
    const release = this.reserve(b.memory ?? SERVER_DEFAULTS.sandboxMemoryMiB);
    clearTimeout(b.timer);
    b.status = "building";
    let plan: BuildPlan;
    let base: ReturnType<TemplateBuilds["base"]>;
    try {
      plan = await planBuild(body, b.files);
      base = this.base(b.owner, plan.from);
    } catch (err) {
      // Refused: the build ends here, as one that failed (the SDK will not start it again).
      b.reason = { message: messageOf(err), logEntries: [] };
      release();
      await this.finished(b, "error");
      throw err;
    }
    b.done = this.run(b, plan, base).finally(release);
  }

  /** Stops the builds under way and forgets every build. */
  // Builds are refused once close() began: none boots a VM after it.
  private open(): void {
    if (this.closed) throw new ServerClosingError("the server is shutting down: build templates on another");
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const b of this.builds.values()) b.abort.abort();
    await Promise.allSettled([...this.builds.values()].map((b) => b.done));
    await Promise.all([...this.builds.values()].map((b) => this.forget(b)));
  }

  // What the build starts from: the owner's template, the server's, or an image.
  private base(owner: string, from: BuildPlan["from"]): TemplateBuild | (ReturnType<ImageCatalog["image"]> & StartCommands) {
    if ("image" in from) return this.catalog.image(from.image);
    return this.store.entry(owner, from.template) ?? this.catalog.template(from.template);
  }

  private async run(b: Build, plan: BuildPlan, base: ReturnType<TemplateBuilds["base"]>): Promise<void> {
    const log = new StepLog(b);
    let step = "base";
    // The SDK's step number of each of the builder's steps.
    let origin: number[] = [];
    let outcome: "ready" | "error" = "error";
    try {
      log.add("info", `FROM ${base.image}`, step);
      const { config } = await resolveImage(this.images, base.image);
      const translated = builderSteps(plan, config.user ?? "root");
      origin = translated.origin;
      const { steps } = translated;
      const built = await buildImage(
        { from: base.image, steps, tag: `msb.local/e2b/${b.templateID}:${b.buildID}` },
        {
          log: (e) => {
            const n = origin[e.step];
            if (n === undefined) return;
            step = String(n);
            if (e.kind === "step") log.begin(step, plan.described[n - 1] ?? "");
            else if (e.kind === "cached") log.cached();
            else log.output(e.kind, e.text, step);
          },
          signal: b.abort.signal,
          noCache: plan.noCache,
          network: "public",
          memory: b.memory ?? SERVER_DEFAULTS.sandboxMemoryMiB,
          ...(b.cpus !== undefined ? { cpus: b.cpus } : {}),
        },
      );
      step = "finalize";
      log.flush();
      // A start or ready command of its own replaces the base's pair, else the base's are kept.
      const start = plan.startCmd || plan.readyCmd ? plan : base;
      const record: TemplateBuild = {
        image: built.ref,
        kind: base.kind,
        ...(start.startCmd ? { startCmd: start.startCmd } : {}),
        ...(start.readyCmd ? { readyCmd: start.readyCmd } : {}),
        createdAt: new Date().toISOString(),
      };
      await this.store.add(b.owner, b.templateID, b.name, b.buildID, record, b.tags);
      const cached = built.steps.filter((s) => s.cached).length;
      log.add("info", `Built ${b.name} (${b.tags.join(", ")}): ${built.steps.length} steps, ${cached} from the cache`, step);
      outcome = "ready";
    } catch (err) {
      log.flush();
      let message = messageOf(err);
      const n = err instanceof BuildError ? origin[err.step] : undefined;
      if (n !== undefined) {
        step = String(n);
        // Told as the SDK numbers its steps; the builder's log file is this machine's (its lines are in the build's logs).
        const how =
          (err as BuildError).exitCode !== null
            ? `exited with ${(err as BuildError).exitCode}`
            : `failed: ${message.replace(/; the build's (output|log) is (in )?\S+$/, "")}`;
        message = `step ${n} (${plan.described[n - 1]}) ${how}`;
      }
      if (b.abort.signal.aborted) message = "the build was stopped: the server is shutting down";
      log.add("error", message, step);
      b.reason = { message, step, logEntries: b.logs.filter((e) => e.step === step).slice(-20) };
    } finally {
      await this.finished(b, outcome);
    }
  }

  // An ended build's files go, before its status says it ended (a client that sees it may look);
  // its status and logs stay a while.
  private async finished(b: Build, outcome: "ready" | "error"): Promise<void> {
    await b.files.discard();
    b.status = outcome;
    b.timer = setTimeout(() => void this.forget(b), KEPT_MS).unref();
  }

  private async forget(b: Build): Promise<void> {
    clearTimeout(b.timer);
    this.builds.delete(b.buildID);
    await b.files.discard();
  }
}

// Collects a build's log entries: each SDK step told once, as its user wrote it (before its
// output if it has any, else when it ends; CACHED when the builder took all of its own steps for
// it from its cache), its output cut into lines (a line split across chunks kept whole), each as
// long as MAX_LINE at most, MAX_LOGS of them at most.
class StepLog {
  private partial = new Map<string, { text: string; step: string }>();
  private dropped = 0;
  private current: { step: string; text: string; told: boolean; allCached: boolean; lastCached: boolean } | undefined;

  constructor(private readonly b: Build) {}

  add(level: LogLevel, message: string, step: string): void {
    if (this.b.logs.length >= MAX_LOGS) return void this.dropped++;
    this.b.logs.push({ timestamp: new Date().toISOString(), level, message: message.slice(0, MAX_LINE), step });
  }

  /** One of the builder's steps for the SDK's step `step` (described as `text`) begins. */
  begin(step: string, text: string): void {
    const c = this.current;
    if (c?.step === step) {
      c.allCached &&= c.lastCached;
      c.lastCached = false;
      return;
    }
    this.flush();
    this.current = { step, text, told: false, allCached: true, lastCached: false };
  }

  /** The builder's step just begun was taken from its cache. */
  cached(): void {
    if (this.current) this.current.lastCached = true;
  }

  output(stream: "stdout" | "stderr", text: string, step: string): void {
    this.tell(false);
    const held = this.partial.get(stream);
    const lines = ((held && held.step === step ? held.text : "") + text).split("\n");
    this.partial.set(stream, { text: lines.pop()!, step });
    for (const line of lines) this.add("info", line, step);
  }

  /** Ends the step under way and the lines left open; notes the lines left out. */
  flush(): void {
    const c = this.current;
    if (c) this.tell(c.allCached && c.lastCached);
    this.current = undefined;
    for (const { text, step } of this.partial.values()) if (text) this.add("info", text, step);
    this.partial.clear();
    if (this.dropped) {
      this.b.logs.push({ timestamp: new Date().toISOString(), level: "warn", message: `${this.dropped} more lines of output were left out` });
      this.dropped = 0;
    }
  }

  private tell(cached: boolean): void {
    const c = this.current;
    if (!c || c.told) return;
    c.told = true;
    this.add("info", cached ? `CACHED ${c.text}` : c.text, c.step);
  }
}

function positive(what: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0)
    throw new InvalidArgumentError(`${what} ${JSON.stringify(v)} is invalid: give a positive whole number`);
  return v;
}
