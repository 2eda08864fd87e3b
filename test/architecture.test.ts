// The layers' boundary: above src/vm, nothing names a VMM. The sandboxes and the server reach VMs
// only through src/vm/machine.ts (and the network policy's option checks), never a backend, the
// decision between them, or how snapshots are made.
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const SRC = fileURLToPath(new URL("../src", import.meta.url));
const ALLOWED_VM = new Set(["machine.js", "netpolicy.js"]);

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith(".ts") ? [path.join(dir, e.name)] : [],
  );
}

describe("the layers above src/vm", () => {
  it("import only the machine interface of src/vm", () => {
    const offending: string[] = [];
    for (const layer of ["sandbox", "server"]) {
      for (const file of sources(path.join(SRC, layer))) {
        for (const [, spec] of readFileSync(file, "utf8").matchAll(/^(?:import|export)[^;]*?from "([^"]+)"/gms)) {
          const target = path.resolve(path.dirname(file), spec!);
          if (path.dirname(target) === path.join(SRC, "vm") && !ALLOWED_VM.has(path.basename(target))) offending.push(`${path.relative(SRC, file)} -> ${spec}`);
        }
      }
    }
    expect(offending).toEqual([]);
  });
});
