// Where the native parts come from (src/artifacts.ts): an environment override, a checkout's
// source build, the host's platform package, in that order; and what a miss says. Package roots
// here are made up of empty files: only the lookup is under test (the packed tarballs are booted
// for real in test/package).
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { guestArtifact, nativeArtifact, PLATFORMS } from "../src/artifacts.js";
import { AgentBinaryError, GuestKernelError, VmmHelperError } from "../src/errors.js";

const work = mkdtempSync(path.join(tmpdir(), "msb-artifacts-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const own = PLATFORMS[`${process.platform}-${process.arch}`]!;
const file = (p: string, exec = true) => {
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, "");
  if (exec) chmodSync(p, 0o755);
  return p;
};
// An installed package: microsandbox with, beside it in node_modules, the platform package.
function installed(name: string, withPlatform: boolean): string {
  const modules = path.join(work, name, "node_modules");
  const pkg = path.join(modules, "microsandbox");
  file(path.join(pkg, "package.json"), false);
  writeFileSync(path.join(pkg, "package.json"), '{ "name": "microsandbox", "version": "0.1.0" }');
  if (withPlatform) {
    const platform = path.join(modules, ...own.package.split("/"));
    file(path.join(platform, "package.json"), false);
    writeFileSync(path.join(platform, "package.json"), JSON.stringify({ name: own.package, version: "0.1.0" }));
    for (const f of own.native) file(path.join(platform, "native", f), f === "msb-vmm");
    for (const f of ["msb-agent", "msb-floor-init"]) file(path.join(platform, "guest", f));
    file(path.join(platform, "guest", own.guest === "x86_64" ? "vmlinux" : "Image"), false);
  }
  return pkg;
}

describe.skipIf(!own)("artifacts", () => {
  it("come from the host's platform package in an installed package, which has no source build", () => {
    const pkg = installed("plain", true);
    const platform = path.join(work, "plain", "node_modules", ...own.package.split("/"));
    expect(nativeArtifact("msb-vmm", pkg)).toEqual({
      path: path.join(platform, "native", "msb-vmm"),
      source: "platform package",
      from: `${own.package} 0.1.0`,
    });
    expect(nativeArtifact("microsandbox.node", pkg).path).toBe(path.join(platform, "native", "microsandbox.node"));
    const kernel = guestArtifact(own.guest, own.guest === "x86_64" ? "vmlinux" : "Image", {}, pkg);
    expect(kernel).toMatchObject({ source: "platform package", path: path.join(platform, "guest", own.guest === "x86_64" ? "vmlinux" : "Image") });
    expect(guestArtifact(own.guest, "msb-agent", {}, pkg).source).toBe("platform package");
  });

  it("prefer a checkout's source build, and an environment override to both", () => {
    const pkg = installed("checkout", true);
    const built = file(path.join(pkg, "build", "Release", "msb-vmm"));
    expect(nativeArtifact("msb-vmm", pkg)).toMatchObject({ path: built, source: "source build", from: path.join("build", "Release") });
    const agent = file(path.join(pkg, "build-guest", own.guest, "msb-agent"));
    expect(guestArtifact(own.guest, "msb-agent", {}, pkg).path).toBe(agent);
    const mine = file(path.join(work, "my-agent"));
    expect(guestArtifact(own.guest, "msb-agent", { MSB_AGENT_PATH: mine }, pkg)).toEqual({ path: mine, source: "environment", from: "MSB_AGENT_PATH" });
  });

  it("name what is missing, which package carries it and how to get it, without pointing at scripts that are not there", () => {
    const pkg = installed("bare", false);
    const err = (() => {
      try {
        guestArtifact(own.guest, own.guest === "x86_64" ? "vmlinux" : "Image", {}, pkg);
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err).toBeInstanceOf(GuestKernelError);
    expect(err!.message).toContain(`${own.package} (not installed)`);
    expect(err!.message).toContain(`npm install ${own.package}`);
    expect(err!.message).toContain("--include=optional");
    expect(err!.message).not.toContain("scripts/");
    expect(() => nativeArtifact("msb-vmm", pkg)).toThrow(VmmHelperError);
    expect(() => guestArtifact(own.guest, "msb-agent", {}, pkg)).toThrow(AgentBinaryError);
    // An override that names nothing usable says so, and what to do.
    expect(() => guestArtifact(own.guest, "msb-agent", { MSB_AGENT_PATH: path.join(work, "none") }, pkg)).toThrow(
      /MSB_AGENT_PATH.*does not exist or cannot be used: fix MSB_AGENT_PATH/,
    );
  });

  it("take a foreign guest's half from any installed package that carries it", () => {
    const other = own.guest === "x86_64" ? "aarch64" : "x86_64";
    const pkg = installed("foreign", true);
    const carrier = Object.values(PLATFORMS).find((p) => p.guest === other)!;
    const dir = path.join(work, "foreign", "node_modules", ...carrier.package.split("/"));
    file(path.join(dir, "package.json"), false);
    writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: carrier.package, version: "0.1.0" }));
    const agent = file(path.join(dir, "guest", "msb-agent"));
    expect(guestArtifact(other, "msb-agent", {}, pkg)).toMatchObject({ path: agent, source: "platform package" });
    // The override is for the host's own guest only.
    expect(guestArtifact(other, "msb-agent", { MSB_AGENT_PATH: "/nonexistent" }, pkg).path).toBe(agent);
  });
});
