#!/usr/bin/env node
// Builds the native parts at `npm install` time: the N-API addon and the VM helper msb-vmm beside
// it (node-gyp, against the headers of the Node that runs this script, so nothing is downloaded)
// and, on Linux, the static guest agent (native/agent/Makefile, musl-gcc + nanopb).
// Flags: --force rebuilds even when a prebuild or a current build exists; --prebuild makes
// prebuilds/<platform>-<arch>/ with prebuildify instead (N-API: one addon for every Node), with
// msb-vmm copied beside the addon, where the package looks for it.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, readdirSync } from "node:fs";
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

function nodeGypScript() {
  try {
    return require.resolve("node-gyp/bin/node-gyp.js", { paths: [root] });
  } catch {
    // npm ships its own node-gyp and names it for lifecycle scripts.
    return process.env.npm_config_node_gyp;
  }
}

// Node's own headers sit next to its binary in official and distro builds.
function nodeDir() {
  const dir = path.dirname(path.dirname(process.execPath));
  return existsSync(path.join(dir, "include", "node", "node_api.h")) ? dir : undefined;
}

function buildAddon() {
  if (!force) {
    try {
      const found = require("node-gyp-build").path(root);
      // The helpers must sit beside the addon that will be loaded (src/native.ts and msb-vmm look there).
      const helpers = process.platform === "linux" ? ["msb-vmm", "msb-netpolicy.so", "msb-openfd.so"] : ["msb-vmm"];
      const missing = helpers.filter((h) => !existsSync(path.join(path.dirname(found), h)));
      if (!missing.length) {
        console.log(`microsandbox: using native addon ${path.relative(root, found)} and the VM helpers beside it`);
        return;
      }
      console.log(`microsandbox: ${path.relative(root, found)} has no ${missing.join(" or ")} beside it: building all`);
    } catch {
      // no prebuild or earlier build: compile below
    }
  }
  const gyp = nodeGypScript();
  if (!gyp) throw new Error("node-gyp not found: install it (npm i -D node-gyp) or run through npm");
  const args = [gyp, "rebuild"];
  const dir = nodeDir();
  if (dir) args.push(`--nodedir=${dir}`);
  else console.warn("microsandbox: Node headers not found next to the node binary; node-gyp may try to download them");
  const status = run(process.execPath, args);
  if (status !== 0) throw new Error(`node-gyp rebuild failed with exit code ${status}`);
}

function buildAgent() {
  if (process.platform !== "linux") {
    console.log("microsandbox: skipping the guest agent build (it is a Linux binary; build it on Linux or use a release)");
    return;
  }
  // The Makefile writes build-guest/<arch>/msb-agent: outside build/, which node-gyp rebuild wipes.
  const status = run("make", ["-s", "-C", "native/agent"]);
  if (status !== 0) {
    console.warn(
      "microsandbox: the guest agent was not built. It needs musl-gcc, nanopb and protoc:\n" +
        "  sudo apt-get install musl-tools libnanopb-dev nanopb protobuf-compiler\n" +
        "then run `npm rebuild microsandbox`. Sandboxes cannot boot without it.",
    );
    if (process.env.CI || force) process.exit(status);
  }
}

function prebuild() {
  const bin = require.resolve("prebuildify/bin.js", { paths: [root] });
  const dir = nodeDir();
  // prebuildify drives node-gyp, which takes the header location from the environment.
  const env = dir ? { ...process.env, npm_config_nodedir: dir } : process.env;
  const status = run(process.execPath, [bin, "--napi", "--strip"], { env });
  if (status !== 0) throw new Error(`prebuildify failed with exit code ${status}`);
  // prebuildify keeps only .node files; the helpers it built go beside the addon it made.
  const out = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
  const addons = existsSync(out) ? readdirSync(out).filter((f) => f.endsWith(".node")) : [];
  if (!addons.length) throw new Error(`prebuildify wrote no addon in ${out}`);
  for (const helper of ["msb-vmm", "msb-netpolicy.so", "msb-openfd.so"]) {
    const built = path.join(root, "build", "Release", helper);
    if (existsSync(built)) copyFileSync(built, path.join(out, helper));
  }
  console.log(`microsandbox: prebuilt ${addons.map((f) => path.join(path.relative(root, out), f)).join(", ")} and the VM helpers beside it`);
}

if (process.argv.includes("--prebuild")) {
  prebuild();
} else {
  buildAddon();
  buildAgent();
}
