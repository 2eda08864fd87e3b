// E2B secrets as kept in the cache (src/server/e2b/secrets.ts): a private file per key that two
// servers on one cache change without losing each other's changes, read back by a new store (a
// restarted server), and a damaged file named rather than taken for "no secrets".
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { SecretStore } from "../../src/server/e2b/secrets.js";

const dir = mkdtempSync(path.join(tmpdir(), "msb-secrets-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const OWNER = "0123456789ab";

describe("secrets in the cache", () => {
  it("keeps every change of two stores writing at once, privately, for a store made later", async () => {
    const a = new SecretStore(dir);
    const b = new SecretStore(dir);
    await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).create(OWNER, `s${i}`, `v${i}`, {})));
    const again = new SecretStore(dir);
    expect(
      again
        .list(OWNER)
        .map((s) => s.name)
        .sort(),
    ).toEqual(Array.from({ length: 20 }, (_, i) => `s${i}`).sort());
    await Promise.all([a.update(OWNER, again.get(OWNER, "s0").secretID, "new"), b.delete(OWNER, again.get(OWNER, "s1").secretID)]);
    expect(again.value(OWNER, "s0")).toBe("new");
    expect(again.get(OWNER, "s0").version).toBe(2);
    expect(() => again.get(OWNER, "s1")).toThrow(/secret "s1" not found/);
    expect(statSync(path.join(dir, `${OWNER}.json`)).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp") || f.endsWith(".lock"))).toEqual([]);
  });

  it("names a damaged file instead of reading it as empty", () => {
    writeFileSync(path.join(dir, "anonymous.json"), "{ half");
    expect(() => new SecretStore(dir).list("anonymous")).toThrow(/secrets file .*anonymous\.json cannot be read .*restore or remove it/);
  });
});
