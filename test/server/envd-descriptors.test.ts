// The committed envd descriptor set (proto/e2b/envd.binpb, which msb server loads) is what
// protoc makes of proto/e2b/*.proto now: an edit to one without the other fails here.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

describe("proto/e2b/envd.binpb", () => {
  it("matches proto/e2b/*.proto (scripts/gen-envd.sh)", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "msb-envd-"));
    try {
      const out = path.join(dir, "envd.binpb");
      const r = spawnSync("bash", ["scripts/gen-envd.sh", out], { cwd: ROOT, encoding: "utf8" });
      expect(r.stderr).toBe("");
      expect(readFileSync(out).equals(readFileSync(path.join(ROOT, "proto/e2b/envd.binpb")))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
