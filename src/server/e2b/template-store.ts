// Templates built by the E2B API's Template builder: each a name, its builds (an image in the
// store, the kind of sandbox it makes, what such a sandbox runs first) and tags naming builds.
// Kept in the cache, so a restarted server still starts them, and seen and used only by the key
// that built them, as E2B's templates are its team's. Sandbox.create("name[:tag]") (or the
// template's id) starts the tagged build ("default" when no tag is named).
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";

import { ImageStore } from "../../images/store.js";
import { cacheDir } from "../../paths.js";
import { type ImageEntry, SANDBOX_KINDS } from "../catalog.js";
import { NotFoundError } from "../errors.js";

const FORMAT = 1;
export const DEFAULT_TAG = "default";
/** A template name (E2B's: letters, digits, '.', '_', '-'), and a tag. */
export const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$/;
const ID = /^[0-9a-f]{20}$/;

/** What a sandbox of a build runs when it starts: the start command in the background, then the ready command until it succeeds. */
export interface StartCommands {
  startCmd?: string;
  readyCmd?: string;
}

export interface TemplateBuild extends ImageEntry, StartCommands {
  createdAt: string;
}

export interface TemplateRecord {
  format: number;
  templateID: string;
  name: string;
  /** The owner id of the key that built it: no other key sees or starts it. */
  owner: string;
  createdAt: string;
  builds: Record<string, TemplateBuild>;
  /** Tag to build id. */
  tags: Record<string, string>;
}

/** "name:tag" (or "name") as its parts; the tag undefined when none is named. */
export function splitName(ref: string): { name: string; tag: string | undefined } {
  const i = ref.lastIndexOf(":");
  return i < 0 ? { name: ref, tag: undefined } : { name: ref.slice(0, i), tag: ref.slice(i + 1) };
}

export class TemplateStore {
  constructor(
    private readonly dir = path.join(cacheDir(), "e2b-templates"),
    private readonly images = new ImageStore(),
  ) {}

  /** `owner`'s templates. */
  list(owner: string): TemplateRecord[] {
    let files: string[];
    try {
      files = readdirSync(this.dir).filter((f) => f.endsWith(".json"));
    } catch {
      return [];
    }
    return files.flatMap((f) => {
      try {
        const r = JSON.parse(readFileSync(path.join(this.dir, f), "utf8")) as TemplateRecord;
        const kinds = Object.values(r.builds ?? {}).every((b) => Object.hasOwn(SANDBOX_KINDS, b.kind));
        return r.format === FORMAT && r.owner === owner && ID.test(r.templateID) && kinds ? [r] : [];
      } catch {
        return []; // half written by a process that died, or not ours
      }
    });
  }

  /** `owner`'s template called `id` (its name or its id, without a tag). */
  find(owner: string, id: string): TemplateRecord | undefined {
    return this.list(owner).find((r) => r.templateID === id || r.name === id);
  }

  /**
   * What a create of `ref` ("name", "name:tag", the template id, with or without a tag) starts,
   * when it names one of `owner`'s templates; NotFoundError when it names one by a tag it lacks.
   */
  entry(owner: string, ref: string): TemplateBuild | undefined {
    const { name, tag } = splitName(ref);
    const r = this.find(owner, name);
    if (!r) return undefined;
    const build = r.builds[r.tags[tag ?? DEFAULT_TAG] ?? ""];
    if (!build) throw new NotFoundError(`template ${JSON.stringify(name)} has no tag ${JSON.stringify(tag ?? DEFAULT_TAG)}: Template.getTags lists its tags`);
    return build;
  }

  /** Records `build` of `owner`'s template `name` (made under `templateID` if new) as `buildID`, tagged with `tags`. */
  async add(owner: string, templateID: string, name: string, buildID: string, build: TemplateBuild, tags: string[]): Promise<void> {
    const r: TemplateRecord = this.find(owner, name) ?? { format: FORMAT, templateID, name, owner, createdAt: build.createdAt, builds: {}, tags: {} };
    r.builds[buildID] = build;
    for (const t of tags) r.tags[t] = buildID;
    await this.save(r);
  }

  /** Points `tags` of `r` at its build `buildID`. */
  async tag(r: TemplateRecord, buildID: string, tags: string[]): Promise<void> {
    for (const t of tags) r.tags[t] = buildID;
    await this.save(r);
  }

  /** Takes `tags` off `r`; a build no tag names any more goes, its image with it. */
  async untag(r: TemplateRecord, tags: string[]): Promise<void> {
    for (const t of tags) {
      if (!Object.hasOwn(r.tags, t)) throw new NotFoundError(`template ${JSON.stringify(r.name)} has no tag ${JSON.stringify(t)}`);
      delete r.tags[t];
    }
    await this.save(r);
  }

  /** Removes the template and the images of its builds. */
  async remove(r: TemplateRecord): Promise<void> {
    rmSync(this.file(r), { force: true });
    for (const b of Object.values(r.builds)) await this.images.remove(b.image);
  }

  // Writes `r` aside and renames it into place; then drops the builds no tag names.
  private async save(r: TemplateRecord): Promise<void> {
    const named = new Set(Object.values(r.tags));
    const dropped = Object.entries(r.builds).filter(([id]) => !named.has(id));
    for (const [id] of dropped) delete r.builds[id];
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const file = this.file(r);
    writeFileSync(`${file}.tmp`, `${JSON.stringify(r, null, 2)}\n`, { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
    for (const [, b] of dropped) await this.images.remove(b.image);
  }

  private file(r: TemplateRecord): string {
    return path.join(this.dir, `${r.templateID}.json`);
  }
}
