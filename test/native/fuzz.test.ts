// Short runs of the libFuzzer harnesses (scripts/fuzz.sh) from the committed corpora, under ASan
// and UBSan: the frame splitting and decoding the agent runs on host bytes, and msb-vmm's
// reading of DNS responses. Long runs are `scripts/fuzz.sh SECONDS`. Needs clang and
// libclang-rt-14-dev (scripts/setup-debian.sh).
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

describe.skipIf(process.platform !== "linux")("native decoding of untrusted bytes under libFuzzer", () => {
  it.each([
    ["the agent's frame decoding", "frames"],
    ["msb-vmm's DNS response reading", "dns"],
  ])(
    "%s runs 10 s from its corpus without a crash, a leak or undefined behaviour",
    (_, target) => {
      const r = spawnSync("bash", ["scripts/fuzz.sh", "10", target], { cwd: ROOT, encoding: "utf8", timeout: 120_000 });
      expect(r.stderr).toMatch(/INITED cov: \d+/);
      expect(r.stderr).toMatch(/Done \d+ runs in \d+ second/);
      expect(r.status).toBe(0);
    },
    150_000,
  );
});
