#!/usr/bin/env node
// The source build of a checkout (`npm install` runs it through `prepare`): the N-API addon and
// the VM helper msb-vmm with its preload (msb-openfd.so) into build/Release (node-gyp, against the headers of the
// Node that runs this script, so nothing is downloaded) and, on Linux, the static guest agent into
// build-guest/ARCH (native/agent/Makefile, musl-gcc + nanopb). An installed package never builds:
// its parts come from the platform package (src/artifacts.ts).
//   node scripts/build-native.mjs [--force]   --force rebuilds even what is built already
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const force = process.argv.includes("--force");

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

/** Node's own headers, next to its binary in official and distro builds. */
export function nodeDir() {
  const dir = path.dirname(path.dirname(process.execPath));
  return existsSync(path.join(dir, "include", "node", "node_api.h")) ? dir : undefined;
}

function buildAddon() {
  const outputs = ["microsandbox.node", "msb-vmm", ...(process.platform === "linux" ? ["msb-openfd.so"] : [])];
  if (!force && outputs.every((f) => existsSync(path.join(root, "build", "Release", f)))) {
    console.log("microsandbox: the native addon and the VM helpers are built (build/Release)");
    return;
  }
  const gyp = require.resolve("node-gyp/bin/node-gyp.js", { paths: [root] });
  const args = [gyp, "rebuild"];
  const dir = nodeDir();
  if (dir) args.push(`--nodedir=${dir}`);
  else console.warn("microsandbox: Node headers not found next to the node binary; node-gyp may try to download them");
  const status = run(process.execPath, args);
  if (status !== 0) throw new Error(`node-gyp rebuild failed with exit code ${status}`);
  // On macOS libkrun creates VMs through Hypervisor.framework only for a program with this
  // entitlement: signed ad hoc here, as scripts/pack.mjs signs the darwin package's.
  if (process.platform === "darwin") {
    const entitlements = path.join(root, "scripts", "hypervisor.entitlements");
    if (run("codesign", ["--force", "--sign", "-", "--entitlements", entitlements, path.join(root, "build", "Release", "msb-vmm")]) !== 0) {
      throw new Error("codesign of build/Release/msb-vmm failed");
    }
  }
}

function buildAgent() {
  if (process.platform !== "linux") {
    console.log("microsandbox: skipping the guest agent (a Linux binary: build it on Linux, or use the platform package's)");
    return;
  }
  // The Makefile writes build-guest/<arch>/msb-agent: outside build/, which node-gyp rebuild wipes.
  const status = run("make", ["-s", "-C", "native/agent"]);
  if (status !== 0) {
    throw new Error(
      "the guest agent was not built. It needs musl-gcc, nanopb and protoc: " +
        "sudo apt-get install musl-tools libnanopb-dev nanopb protobuf-compiler (bash scripts/setup-debian.sh installs them)",
    );
  }
}

if (fileURLToPath(import.meta.url) === path.resolve(process.argv[1] ?? "")) {
  buildAddon();
  buildAgent();
}
