// A short run of the agent's libFuzzer harness (scripts/fuzz.sh) from the committed corpus: the
// frame splitting and decoding the agent runs on host bytes, under ASan and UBSan. Long runs are
// `scripts/fuzz.sh SECONDS`. Needs clang and libclang-rt-14-dev (scripts/setup-debian.sh).
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

describe.skipIf(process.platform !== "linux")("the agent's frame decoding under libFuzzer", () => {
  it("runs 10 s from the corpus without a crash, a leak or undefined behaviour", () => {
    const r = spawnSync("bash", ["scripts/fuzz.sh", "10"], { cwd: ROOT, encoding: "utf8", timeout: 120_000 });
    expect(r.stderr).toMatch(/INITED cov: \d+/);
    expect(r.stderr).toMatch(/Done \d+ runs in \d+ second/);
    expect(r.status).toBe(0);
  }, 150_000);
});
