// The native addon's probe, against this machine's real /dev/kvm and dynamic loader.
import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";

import { libkrunName, probe } from "../src/native.js";

describe("probe", () => {
  it("reports /dev/kvm as it is on this host", () => {
    const r = probe();
    expect(r.kvm.path).toBe("/dev/kvm");
    if (!existsSync("/dev/kvm")) {
      expect(r.kvm.ok).toBe(false);
      expect(r.kvm.detail).toContain("open(/dev/kvm, O_RDWR) failed");
      expect(r.kvm.errno).toBeGreaterThan(0);
    } else {
      expect(typeof r.kvm.ok).toBe("boolean");
    }
  });

  it("reports a missing kvm device with the path and errno", () => {
    const r = probe({ kvmPath: "/nonexistent/kvm" });
    expect(r.kvm).toMatchObject({ ok: false, path: "/nonexistent/kvm" });
    expect(r.kvm.detail).toMatch(/\/nonexistent\/kvm.*No such file/);
  });

  it("explains why libkrun cannot be loaded", () => {
    const r = probe({ libkrun: "/nonexistent/libkrun.so.1" });
    expect(r.libkrun).toMatchObject({ ok: false, name: "/nonexistent/libkrun.so.1" });
    expect(r.libkrun.detail).toContain("dlopen(/nonexistent/libkrun.so.1) failed");
  });

  it("tells a library that is not libkrun from libkrun", () => {
    const r = probe({ libkrun: "libc.so.6" });
    expect(r.libkrun.ok).toBe(false);
    expect(r.libkrun.detail).toContain("no krun_create_ctx");
  });

  it("reports libkrun's entry points, generation and libkrunfw", () => {
    const missing = probe({ libkrun: "/nonexistent/libkrun.so.1", libkrunfw: "/nonexistent/libkrunfw.so.5" });
    expect(missing.libkrun).toMatchObject({ ok: false, symbols: [], generation: "unknown", readOnlyImage: false, networkNone: false });
    expect(missing.libkrunfw).toMatchObject({ ok: false, name: "/nonexistent/libkrunfw.so.5" });
    expect(missing.libkrunfw.detail).toContain("dlopen(/nonexistent/libkrunfw.so.5) failed");
    // Any loadable library satisfies the libkrunfw probe, which only checks it loads.
    expect(probe({ libkrunfw: "libc.so.6" }).libkrunfw.ok).toBe(true);
  });

  it("takes the libkrun path from MSB_LIBKRUN_PATH", () => {
    expect(libkrunName({ MSB_LIBKRUN_PATH: "/opt/krun/libkrun.so" })).toBe("/opt/krun/libkrun.so");
    expect(libkrunName({})).toBe(process.platform === "darwin" ? "libkrun.1.dylib" : "libkrun.so.1");
  });
});
