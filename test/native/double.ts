// Builds the recording libkrun double (libkrun-double.c) once per generation, and points the VM
// helper at it: libkrun, libkrunfw and a KVM device that opens, on a host that is not PVM.

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

// libkrun generations, by the release that introduced the newest entry point each one has.
export const GENERATIONS = { "1.18": 11800, "1.17": 11700, "1.10": 11000, "1.9.5": 10905, "1.8": 10800 } as const;
export type Generation = keyof typeof GENERATIONS;

export interface Doubles {
  dir: string;
  lib: Record<Generation, string>;
  remove(): void;
}

export function buildDoubles(): Doubles {
  const dir = mkdtempSync(path.join(tmpdir(), "msb-krun-double-"));
  const lib = {} as Record<Generation, string>;
  for (const [name, version] of Object.entries(GENERATIONS)) {
    const out = path.join(dir, `libkrun-${name}.so`);
    const cc = spawnSync(
      "cc",
      ["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", `-DKRUN_DOUBLE_VERSION=${version}`, "-o", out, path.join(ROOT, "test/native/libkrun-double.c")],
      { encoding: "utf8" },
    );
    if (cc.status !== 0) throw new Error(`compiling the libkrun double failed:\n${cc.stderr}`);
    lib[name as Generation] = out;
  }
  return { dir, lib, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The environment under which msb-vmm finds `lib` as libkrun and libkrunfw, and a usable, non-PVM KVM. */
export function doubleEnv(lib: string, log?: string): Record<string, string> {
  return {
    MSB_LIBKRUN_PATH: lib,
    MSB_LIBKRUNFW_PATH: lib,
    // /dev/null opens read-write like a usable /dev/kvm; the double never touches KVM.
    MSB_VMM_KVM_DEVICE: "/dev/null",
    MSB_VMM_PVM_MODULE: "/nonexistent/kvm_pvm",
    ...(log ? { KRUN_DOUBLE_LOG: log } : {}),
  };
}

/**
 * The doubles for the tests of one file, built before them and removed after; after each test the
 * environment it pointed at a double or a stand-in (doubleEnv, MSB_CACHE_DIR, MSB_KERNEL,
 * MSB_QEMU) is as it was. Returns the doubles once built.
 */
export function doublesForFile(): () => Doubles {
  let doubles: Doubles | undefined;
  const saved = { ...process.env };
  beforeAll(() => {
    doubles = buildDoubles();
  });
  afterAll(() => doubles?.remove());
  afterEach(() => {
    for (const k of ["MSB_CACHE_DIR", "MSB_KERNEL", "MSB_QEMU", "KRUN_DOUBLE_LOG", ...Object.keys(doubleEnv(""))]) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });
  return () => {
    if (!doubles) throw new Error("the doubles are built in beforeAll: use them inside a test");
    return doubles;
  };
}
