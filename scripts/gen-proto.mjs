#!/usr/bin/env node
// TypeScript for every protocol we speak, generated from proto/ into src/gen/ by one toolchain
// (protoc with @bufbuild/protoc-gen-es) before the TypeScript is compiled: the agent's
// (agent.proto), the VM helper's (vmm.proto) and E2B's envd (e2b/*.proto). The C side is generated
// from the same files by nanopb. Nothing generated is committed.
//   node scripts/gen-proto.mjs
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const out = path.join(root, "src", "gen");
const plugin = path.join(root, "node_modules", ".bin", "protoc-gen-es");
const sets = [
  { include: "proto", files: ["agent.proto", "vmm.proto"] },
  { include: "proto/e2b", files: ["process.proto", "filesystem.proto"], dir: "e2b" },
];

rmSync(out, { recursive: true, force: true });
for (const set of sets) {
  const dest = path.join(out, set.dir ?? "");
  mkdirSync(dest, { recursive: true });
  const r = spawnSync(
    "protoc",
    [`--plugin=protoc-gen-es=${plugin}`, `--es_out=${dest}`, "--es_opt=target=ts,import_extension=js", "-I", path.join(root, set.include), ...set.files],
    { cwd: root, stdio: "inherit" },
  );
  if (r.error?.code === "ENOENT") {
    console.error("microsandbox: protoc not found: install protobuf-compiler (Debian/Ubuntu), protobuf (Fedora, Homebrew)");
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}
