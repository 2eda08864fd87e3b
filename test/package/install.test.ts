// The packed tarballs as users meet them. `npm run pack` makes them; a machine with no compiler
// (a Debian minbase root with QEMU and Node's libraries, test/package/user-root.sh) installs the
// main and linux-x64 tarballs offline from a folder, as a user who is not root, and runs the SDK
// page's JavaScript examples against images in a real registry (Debian's docker-registry over TLS,
// fed from an OCI layout). The linux-arm64 tarball holds aarch64 programs, and its agent and kernel
// boot in qemu-system-aarch64.
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ociLayout } from "../../scripts/oci-layout.mjs";
import { ImageStore } from "../../src/images/store.js";
import { cacheDir } from "../../src/paths.js";
import { startRegistry, type TestRegistry } from "../images/registry-helpers.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const run = promisify(execFile);
const root = process.getuid?.() === 0;
const VERSION = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")).version as string;
const tarball = (name: string) => `microsandbox${name ? `-${name}` : ""}-${VERSION}.tgz`;

// The SDK page's two JavaScript examples, as a user pastes them.
const EXAMPLES = `
import { NodeSandbox } from "microsandbox";

async function main() {
  const sandbox = await NodeSandbox.create({ name: "example" });
  try {
    const execution = await sandbox.run("console.log('Hello from Node!')");
    console.log(await execution.output());
  } finally {
    await sandbox.stop();
  }
}

async function second() {
  const sandbox = await NodeSandbox.create();
  try {
    const execution = await sandbox.run("console.log(2 + 2)");
    console.log(await execution.output()); // "4"
  } finally {
    await sandbox.stop();
  }
}

await main().catch(console.error);
await second().catch(console.error);
`;

describe.skipIf(!root || process.platform !== "linux" || process.arch !== "x64")("the packed tarballs", () => {
  const work = mkdtempSync(path.join(tmpdir(), "msb-package-"));
  const pkgs = path.join(work, "pack");
  let registry: TestRegistry;
  let image: string;

  beforeAll(async () => {
    await run(process.execPath, [path.join(ROOT, "scripts/pack.mjs"), "--out", pkgs], { cwd: ROOT, maxBuffer: 1 << 24 });
    // The registry, and the node image in it: the Debian node rootfs of local:node as an OCI
    // layout, pushed with skopeo. A user's code names it only through MSB_NODE_IMAGE.
    registry = await startRegistry({ tls: true });
    const layout = path.join(work, "layout");
    const rootfs = (await new ImageStore().lookup("local:node"))!.rootfs;
    ociLayout({ rootfs, layout, tag: "22-slim", config: { Env: ["PATH=/usr/local/bin:/usr/bin:/bin"], Cmd: ["node"] } });
    image = `${registry.host}/library/node:22-slim`;
    await run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:22-slim`, `docker://${image}`]);
    execFileSync("cp", [registry.ca!, path.join(pkgs, "ca.crt")]);
    // The folder the offline install reads: every package the two tarballs need, in an npm cache
    // filled here (this machine may reach the registry; the user's may not).
    const fill = path.join(work, "fill");
    mkdirSync(fill);
    await run(
      "npm",
      [
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        "--cache",
        path.join(pkgs, "npm-cache"),
        path.join(pkgs, tarball("")),
        path.join(pkgs, tarball("linux-x64")),
      ],
      { cwd: fill },
    );
  }, 900_000);

  afterAll(async () => {
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it("are made by npm run pack: the main package, and one per platform with what its platform needs", () => {
    const files = readdirSync(pkgs)
      .filter((f) => f.endsWith(".tgz"))
      .sort();
    expect(files).toEqual([tarball(""), tarball("darwin-arm64").replace(/\.tgz$/, "-guest-only.tgz"), tarball("linux-arm64"), tarball("linux-x64")].sort());
    const list = (t: string) =>
      execFileSync("tar", ["tzf", path.join(pkgs, t)], { encoding: "utf8" })
        .split("\n")
        .filter(Boolean);
    // The main package: JavaScript and interpreter drivers; nothing to compile.
    const main = list(tarball(""));
    expect(main.some((f) => /\.(c|cc|h|gyp)$/.test(f) || f.includes("native/"))).toBe(false);
    const manifest = JSON.parse(execFileSync("tar", ["xzOf", path.join(pkgs, tarball("")), "package/package.json"], { encoding: "utf8" }));
    expect(manifest.scripts).toBeUndefined();
    expect(Object.keys(manifest.optionalDependencies).sort()).toEqual(["@microsandbox/darwin-arm64", "@microsandbox/linux-arm64", "@microsandbox/linux-x64"]);
    for (const [name, guest] of [
      ["linux-x64", "vmlinux"],
      ["linux-arm64", "Image"],
    ] as const) {
      expect(list(tarball(name)).sort()).toEqual(
        [
          "README.md",
          "guest/msb-agent",
          "guest/msb-floor-init",
          `guest/${guest}`,
          "native/microsandbox.node",
          "native/msb-openfd.so",
          "native/msb-vmm",
          "package.json",
        ]
          .map((f) => `package/${f}`)
          .sort(),
      );
    }
    const linux = JSON.parse(execFileSync("tar", ["xzOf", path.join(pkgs, tarball("linux-x64")), "package/package.json"], { encoding: "utf8" }));
    expect(linux).toMatchObject({ name: "@microsandbox/linux-x64", version: VERSION, os: ["linux"], cpu: ["x64"], libc: ["glibc"] });
    // darwin's native half needs a Mac to build and sign; here only its guest half, said so in its name.
    expect(list(tarball("darwin-arm64").replace(/\.tgz$/, "-guest-only.tgz")).filter((f) => f.includes("native/"))).toEqual([]);
  });

  it("install offline where there is no compiler, and run the SDK page's examples as a user who is not root", async () => {
    const machine = execFileSync("bash", [path.join(ROOT, "test/package/user-root.sh"), cacheDir()], { encoding: "utf8", timeout: 900_000 }).trim();
    // Nothing to compile with, and nothing but what the tarballs bring.
    for (const tool of ["cc", "gcc", "g++", "make", "musl-gcc", "nanopb_generator.py", "protoc", "debootstrap", "apt-get"]) {
      const found = ["usr/bin", "bin", "usr/local/bin"].some((d) => {
        try {
          return statSync(path.join(machine, d, tool)).isFile();
        } catch {
          return false;
        }
      });
      expect(found, tool).toBe(tool === "apt-get");
    }
    expect(execFileSync("find", [machine, "-name", "libprotobuf-nanopb.a"], { encoding: "utf8" })).toBe("");
    const userWork = path.join(work, "user");
    mkdirSync(userWork);
    writeFileSync(path.join(pkgs, "examples.mjs"), EXAMPLES);
    const script = [
      "set -e",
      "mkdir -p ~/app && cd ~/app && cp /pkgs/examples.mjs . && cp -r /pkgs/npm-cache ~/npm-cache",
      'echo \'{ "name": "app", "version": "1.0.0", "private": true }\' > package.json',
      "start=$(date +%s%N)",
      `npm install --offline --no-audit --no-fund --cache ~/npm-cache /pkgs/${tarball("")} /pkgs/${tarball("linux-x64")} 2>&1`,
      'echo "install-ms $(( ($(date +%s%N) - start) / 1000000 ))"',
      "echo uid=$(id -u)",
      "node examples.mjs",
      "ls ~/.cache/microsandbox",
      "npx msb doctor",
    ].join("\n");
    const { stdout, stderr } = await run(
      "unshare",
      [
        "--mount",
        "--propagation",
        "private",
        "bash",
        path.join(ROOT, "test/package/as-user.sh"),
        machine,
        userWork,
        pkgs,
        `MSB_NODE_IMAGE=${image}`,
        "NODE_EXTRA_CA_CERTS=/pkgs/ca.crt",
        "--",
        script,
      ],
      { timeout: 600_000, maxBuffer: 1 << 24 },
    );
    const lines = stdout.split("\n");
    expect(lines, stderr).toContain("uid=4242");
    // The examples' own output, line for line.
    const out = lines.slice(lines.indexOf("uid=4242") + 1);
    expect(out[0], stderr).toBe("Hello from Node!");
    expect(out[1]).toBe("4");
    // The caches live in the user's home.
    expect(out).toContain("images");
    // msb doctor names where each part came from, and its verdict agrees with what just ran.
    for (const part of ["guest kernel (QEMU)", "guest agent", "VM helper (msb-vmm)", "native addon"]) {
      expect(stdout).toMatch(
        new RegExp(
          `ok +${part.replace(/[()]/g, "\\$&")}: /home/sbuser/app/node_modules/@microsandbox/linux-x64/\\S+ \\(platform package: @microsandbox/linux-x64 ${VERSION}\\)`,
        ),
      );
    }
    expect(stdout).toMatch(/qemu: usable/);
    expect(stdout).toMatch(/network "none": qemu \(tcg\)/);
    // npm installed no install script of ours, and compiled nothing.
    expect(stdout).not.toMatch(/gyp|make:|cc1/);
    // What npm said, and how long the install took, for the README.
    console.log(stdout.slice(0, stdout.indexOf("uid=")));
  }, 900_000);

  it("linux-arm64: aarch64 programs, and its agent and kernel boot in qemu-system-aarch64", async () => {
    const arm = path.join(work, "arm64");
    mkdirSync(arm);
    execFileSync("tar", ["xzf", path.join(pkgs, tarball("linux-arm64")), "-C", arm]);
    for (const f of ["native/microsandbox.node", "native/msb-vmm", "native/msb-openfd.so", "guest/msb-agent", "guest/msb-floor-init"]) {
      expect(execFileSync("file", ["-b", path.join(arm, "package", f)], { encoding: "utf8" }), f).toMatch(/ARM aarch64/);
    }
    // On this x64 host, the aarch64 guest's half comes from the installed linux-arm64 package
    // (npm install --force takes it whatever the host's cpu), the host's own from linux-x64.
    const project = path.join(work, "arm-project");
    mkdirSync(project);
    writeFileSync(path.join(project, "package.json"), '{ "name": "arm", "version": "1.0.0", "private": true }\n');
    await run(
      "npm",
      [
        "install",
        "--offline",
        "--force",
        "--no-audit",
        "--no-fund",
        "--cache",
        path.join(pkgs, "npm-cache"),
        ...["", "linux-x64", "linux-arm64"].map((t) => path.join(pkgs, tarball(t))),
      ],
      { cwd: project },
    );
    const boot = `
      // Below the package's API: its internal QEMU backend, by file, to boot an aarch64 guest here.
      import { ImageStore } from "microsandbox";
      const { QemuBackend } = await import("./node_modules/microsandbox/dist/vm/qemu.js");
      const store = new ImageStore();
      const image = await store.lookup("local:busybox-aarch64");
      const vm = await new QemuBackend({ accel: "tcg", arch: "aarch64" }).boot({
        name: "packed-arm64", memory: 256, cpus: 1, network: "none", confinement: "required", maxProcesses: 64, bootTimeout: 60,
        rootfs: image.rootfs, rootDisk: () => store.disk(image),
      });
      try {
        const data = Buffer.from("written in, read back");
        await vm.agent.writeFile("/tmp/f", data);
        const back = (await vm.agent.readFile("/tmp/f")).toString();
        const chunks = [];
        for await (const c of vm.agent.spawn(["sh", "-c", "uname -m; sleep 0.3; echo done"])) chunks.push(c.data.toString());
        console.log(JSON.stringify({ back, chunks, qemu: (await import("node:fs")).readFileSync("/proc/" + vm.pid + "/cmdline", "utf8").split("\\0") }));
      } finally {
        await vm.stop();
      }`;
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", boot], { cwd: project, timeout: 120_000 });
    const r = JSON.parse(stdout.trim().split("\n").pop()!) as { back: string; chunks: string[]; qemu: string[] };
    expect(r.back).toBe("written in, read back");
    expect(r.chunks).toEqual(["aarch64\n", "done\n"]);
    expect(r.qemu[0]).toMatch(/qemu-system-aarch64$/);
    const pkgDir = path.join(project, "node_modules/@microsandbox/linux-arm64/guest");
    expect(r.qemu[r.qemu.indexOf("-kernel") + 1]).toBe(path.join(pkgDir, "Image"));
  }, 300_000);
});
