// msb-vmm's DNS reader (native/vmm/dns.c), fed answers a hostile resolver or a guest's crafted
// question could bring: a name whose label holds a NUL or a dot must not be learned, or a
// question for "api.example.com\0.evil.net", answered by evil.net's server, would admit its
// address for api.example.com. The committed fuzz corpus holds these answers.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const corpus = path.join(root, "native", "vmm", "fuzz", "corpus");
const cc = spawnSync("cc", ["--version"]).status === 0;
const work = mkdtempSync(path.join(os.tmpdir(), "msb-dns-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe.skipIf(!cc)("the DNS reader", () => {
  it("learns a plain answer's name, and none whose label holds a NUL or a dot", () => {
    const bin = path.join(work, "dnsnames");
    execFileSync("cc", [
      "-O1",
      "-I",
      path.join(root, "native", "vmm"),
      "-o",
      bin,
      path.join(root, "test", "vm", "fixtures", "dnsnames.c"),
      path.join(root, "native", "vmm", "dns.c"),
    ]);
    const out = execFileSync(
      bin,
      ["a", "nul-in-label", "dot-in-label"].map((f) => path.join(corpus, f)),
      { encoding: "utf8" },
    );
    const learned = Object.fromEntries(
      out
        .trim()
        .split("\n")
        .map((l) => [path.basename(l.split(" ")[0]!), l.split(" ")[1]]),
    );
    expect(learned.a).toMatch(/^[a-z0-9.-]+$/);
    expect(learned["nul-in-label"]).toBe("-");
    expect(learned["dot-in-label"]).toBe("-");
  });
});
