#!/usr/bin/env node
// Finds nanopb for binding.gyp: `lib` prints the static runtime (and fails, saying what to
// install, when the runtime or its generator is missing), `generator` prints the code generator.
// NANOPB_LIB and NANOPB_GENERATOR override the search.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";

const LIB = "libprotobuf-nanopb.a";

function findLib() {
  if (process.env.NANOPB_LIB) return existsSync(process.env.NANOPB_LIB) ? process.env.NANOPB_LIB : "";
  // The compiler knows its own library path (Debian's multiarch dir included).
  const cc = spawnSync(process.env.CC || "cc", [`-print-file-name=${LIB}`], { encoding: "utf8" });
  const printed = cc.status === 0 ? cc.stdout.trim() : "";
  if (path.isAbsolute(printed) && existsSync(printed)) return path.normalize(printed);
  const dirs = ["/usr/local/lib", "/opt/homebrew/lib", "/usr/lib"];
  try {
    for (const d of readdirSync("/usr/lib")) if (/-linux-/.test(d)) dirs.push(path.join("/usr/lib", d));
  } catch {
    // no /usr/lib: nothing more to search
  }
  return dirs.map((d) => path.join(d, LIB)).find((p) => existsSync(p)) ?? "";
}

function findGenerator() {
  if (process.env.NANOPB_GENERATOR) return process.env.NANOPB_GENERATOR;
  for (const name of ["nanopb_generator.py", "nanopb_generator"]) {
    const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  return "";
}

const what = process.argv[2];
if (what === "generator") {
  console.log(findGenerator() || "nanopb_generator.py");
} else if (what === "lib") {
  const lib = findLib();
  const gen = findGenerator();
  if (lib && gen) {
    console.log(lib);
  } else {
    console.error(
      `microsandbox: nanopb ${lib ? "generator" : `runtime (${LIB})`} not found: the VM helper msb-vmm cannot be built.\n` +
        "  Debian/Ubuntu: sudo apt-get install libnanopb-dev nanopb; elsewhere install nanopb's runtime and generator\n" +
        "  (or set NANOPB_LIB and NANOPB_GENERATOR), then npm install again in this checkout",
    );
    process.exit(1);
  }
} else {
  console.error("usage: node nanopb.mjs lib|generator");
  process.exit(2);
}
