#!/usr/bin/env node
// `npm run pack`: every tarball this machine can make, into one folder (default pack/):
// - microsandbox-VERSION.tgz, the main package: JavaScript (the protocols compiled in) and the interpreter drivers. It
//   compiles nothing at install; its optionalDependencies name the platform packages.
// - one per platform (src/artifacts.ts's PLATFORMS), each with its native half in native/ (the
//   N-API addon, msb-vmm and its preload, stripped) and its guest half in guest/ (the static
//   agent, the floor's init, our kernel for its guest architecture):
//   - this host's platform, built natively;
//   - linux-arm64 on an x86_64 Linux host, cross-built with Debian's aarch64 toolchains;
//   - darwin-arm64: its native half only on macOS, signed there with the Hypervisor.framework
//     entitlement (MSB_SIGN_IDENTITY, ad hoc by default); elsewhere its guest half alone, and the
//     tarball says so in its name (…-guest-only.tgz), never to be published as it is. A Mac,
//     which cannot build the Linux guest half, finishes that tarball: --guest-from it.
//   node scripts/pack.mjs [--out DIR] [--only main,linux-x64,...] [--guest-from GUEST-ONLY.tgz]
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { nodeDir } from "./build-native.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({ options: { out: { type: "string", default: "pack" }, only: { type: "string" }, "guest-from": { type: "string" } } });
const out = path.resolve(root, args.out);
const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, stdio: ["ignore", "inherit", "inherit"], ...opts });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed with exit code ${r.status}`);
  return r;
}
const output = (cmd, argv, opts = {}) => spawnSync(cmd, argv, { cwd: root, encoding: "utf8", ...opts }).stdout?.trim() ?? "";

// The main package is staged apart from the checkout: its own fresh dist/ (nothing of a source
// since removed, and the checkout's dist/ untouched), and only what package.json's files name.
const mainStage = mkdtempSync(path.join(os.tmpdir(), "msb-pkg-main-"));
process.on("exit", () => rmSync(mainStage, { recursive: true, force: true }));
run(process.execPath, [path.join(root, "scripts/gen-proto.mjs")]);
run(process.execPath, [path.join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json", "--outDir", path.join(mainStage, "dist")]);
for (const part of ["README.md", ...pkg.files.filter((f) => !f.startsWith("dist"))]) {
  cpSync(path.join(root, part), path.join(mainStage, part), { recursive: true });
}
const { PLATFORMS, PACKAGE_DIRS, guestFiles, KERNEL_FILE } = await import(path.join(mainStage, "dist/artifacts.js"));
// A user's install runs nothing of ours: the checkout's scripts and its tools stay behind. The
// platform packages are the published package's optional dependencies, named by PLATFORMS; the
// checkout lists none, since they exist only once packed (and npm ci wants every listed one).
const { scripts: _scripts, devDependencies: _dev, ...published } = pkg;
published.optionalDependencies = Object.fromEntries(Object.values(PLATFORMS).map((p) => [p.package, pkg.version]));
writeFileSync(path.join(mainStage, "package.json"), `${JSON.stringify(published, null, 2)}\n`);

const hostKey = `${process.platform}-${process.arch}`;
const hostMachine = os.machine();
/** How this host builds a platform's native half, or why it cannot. */
function nativeToolchain(key) {
  if (key === hostKey) return { env: {}, strip: "strip", gypArch: process.arch };
  if (key === "linux-arm64" && hostKey === "linux-x64") {
    const cross = "aarch64-linux-gnu-";
    if (!output("sh", ["-c", `command -v ${cross}g++`])) return { missing: `${cross}g++ (sudo apt-get install g++-aarch64-linux-gnu)` };
    return { env: { CC: `${cross}gcc`, CXX: `${cross}g++`, LINK: `${cross}g++`, AR: `${cross}ar` }, strip: `${cross}strip`, gypArch: "arm64" };
  }
  return { missing: `a ${key} host (or a cross toolchain for it)` };
}

/** Builds a platform's native half in a staging copy of the sources (the checkout's build/ is left alone). */
function buildNative(platform, key, dest) {
  const tc = nativeToolchain(key);
  if (tc.missing) return tc.missing;
  const stage = mkdtempSync(path.join(os.tmpdir(), `msb-pack-${key}-`));
  try {
    for (const part of ["binding.gyp", "native", "proto"]) cpSync(path.join(root, part), path.join(stage, part), { recursive: true });
    symlinkSync(path.join(root, "node_modules"), path.join(stage, "node_modules"));
    const gyp = [path.join(root, "node_modules/node-gyp/bin/node-gyp.js"), "rebuild", `--arch=${tc.gypArch}`];
    const nd = nodeDir();
    if (nd) gyp.push(`--nodedir=${nd}`);
    run(process.execPath, gyp, { cwd: stage, env: { ...process.env, ...tc.env }, stdio: ["ignore", "ignore", "inherit"] });
    mkdirSync(dest, { recursive: true });
    for (const file of platform.native) {
      copyFileSync(path.join(stage, "build/Release", file), path.join(dest, file));
      if (file === "msb-vmm") chmodSync(path.join(dest, file), 0o755);
      // Programs keep their dynamic symbols; libraries and the addon need theirs to load.
      run(tc.strip, [...(file === "msb-vmm" ? [] : ["--strip-unneeded"]), path.join(dest, file)]);
    }
    if (platform.os === "darwin") signDarwin(path.join(dest, "msb-vmm"));
    return undefined;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

// libkrun creates VMs through Hypervisor.framework only for a program with this entitlement.
function signDarwin(helper) {
  const entitlements = path.join(root, "scripts", "hypervisor.entitlements");
  run("codesign", ["--force", "--sign", process.env.MSB_SIGN_IDENTITY || "-", "--entitlements", entitlements, helper]);
}

/** A platform's guest half: the agent and floor init for its guest architecture, and our kernel. */
function buildGuest(platform, dest) {
  const arch = platform.guest;
  mkdirSync(dest, { recursive: true });
  if (args["guest-from"]) {
    run("tar", ["xzf", path.resolve(args["guest-from"]), "-C", dest, "--strip-components=2", `package/${PACKAGE_DIRS.guest}`]);
    return;
  }
  run("make", ["-s", "-C", "native/agent", ...(arch === hostMachine ? [] : [`ARCH=${arch}`]), `OUT=${path.join(os.tmpdir(), `msb-pack-agent-${arch}`)}`]);
  for (const file of guestFiles(arch).filter((f) => f !== KERNEL_FILE[arch])) {
    copyFileSync(path.join(os.tmpdir(), `msb-pack-agent-${arch}`, file), path.join(dest, file));
    chmodSync(path.join(dest, file), 0o755);
  }
  const kernel = output("bash", ["scripts/build-kernel.sh", arch], { stdio: ["ignore", "pipe", "inherit"] })
    .split("\n")
    .pop();
  copyFileSync(kernel, path.join(dest, KERNEL_FILE[arch]));
}

function npmPack(dir) {
  // Everything is built already; prepare would only build the checkout and print into the answer.
  const r = spawnSync("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", out], {
    cwd: dir,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  if (r.status !== 0) throw new Error(`npm pack in ${dir} failed`);
  return JSON.parse(r.stdout)[0].filename;
}

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const only = args.only?.split(",");
const made = [];
for (const [key, platform] of Object.entries(PLATFORMS)) {
  if (only && !only.includes(key)) continue;
  const dir = mkdtempSync(path.join(os.tmpdir(), `msb-pkg-${key}-`));
  try {
    console.error(`pack: ${platform.package}`);
    const missing = buildNative(platform, key, path.join(dir, PACKAGE_DIRS.native));
    buildGuest(platform, path.join(dir, PACKAGE_DIRS.guest));
    const manifest = {
      name: platform.package,
      version: pkg.version,
      description: `microsandbox's ${key} parts: ${missing ? "" : "the native addon and VM helper, "}the ${platform.guest} guest agent and kernel`,
      license: pkg.license,
      os: [platform.os],
      cpu: [platform.cpu],
      ...(platform.libc ? { libc: [platform.libc] } : {}),
      files: missing ? [`${PACKAGE_DIRS.guest}/`] : [`${PACKAGE_DIRS.native}/`, `${PACKAGE_DIRS.guest}/`],
    };
    writeFileSync(path.join(dir, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    writeFileSync(
      path.join(dir, "README.md"),
      `# ${platform.package}\n\nThe ${key} half of [microsandbox](https://www.npmjs.com/package/microsandbox), installed with it as an optional dependency; not for use alone.\n` +
        (missing ? `\nBuilt without its native half, which needs ${missing}: this tarball is not a release.\n` : ""),
    );
    let file = npmPack(dir);
    if (missing) {
      const partial = file.replace(/\.tgz$/, "-guest-only.tgz");
      renameSync(path.join(out, file), path.join(out, partial));
      file = partial;
      console.error(`pack: ${platform.package}: no native half here (needs ${missing}); packed its guest half as ${partial}`);
    }
    made.push(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
if (!only || only.includes("main")) made.unshift(npmPack(mainStage));
for (const file of made) console.log(`${file}\t${(statSync(path.join(out, file)).size / 2 ** 20).toFixed(1)} MiB`);
