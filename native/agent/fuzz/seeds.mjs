#!/usr/bin/env node
// Writes the fuzzer's seed corpus (native/agent/fuzz/corpus): one frame of every host message,
// with every field set, encoded by the host's own encoder. Run after `npm run compile` when the
// protocol changes.
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { encodeFrame } from "../../../dist/agent-client/protocol.js";

const out = path.join(path.dirname(fileURLToPath(import.meta.url)), "corpus");
const messages = {
  exec: {
    session: 1,
    exec: {
      argv: ["sh", "-c", "echo hi"],
      env: ["A=1", "PATH=/bin"],
      cwd: "/root",
      user: "root",
      uid: 0,
      gid: 0,
      openStdin: true,
      timeoutMs: 5000,
      rlimits: [{ resource: 5, soft: 1024, hard: 4096 }],
      window: 65536,
      channel: true,
    },
  },
  data: { session: 1, data: { data: Buffer.from("stdin bytes"), eof: true, channel: true } },
  credit: { session: 1, credit: { bytes: 65536 } },
  signal: { session: 1, signal: { signal: 15 } },
  readFile: { session: 2, readFile: { path: "/etc/hostname", offset: 1, length: 100, window: 65536 } },
  writeFile: { session: 3, writeFile: { path: "/root/f", mode: 0o644, parents: true } },
  listDir: { session: 4, listDir: { path: "/" } },
  stat: { session: 5, stat: { path: "/bin/sh" } },
  mkdir: { session: 6, mkdir: { path: "/a/b", mode: 0o755, parents: true } },
  remove: { session: 7, remove: { path: "/a", recursive: true } },
  rename: { session: 8, rename: { from: "/a", to: "/b" } },
  shutdown: { session: 0, shutdown: {} },
  cancel: { session: 2, cancel: {} },
  suspend: { session: 0, suspend: {} },
  resume: {
    session: 0,
    resume: {
      generation: 2,
      entropy: Buffer.alloc(32, 7),
      unixTimeNs: 1_700_000_000_000_000_000n.toString(),
      hostname: "copy",
      bootId: "00000000-0000-4000-8000-000000000000",
      keep: [1, 3],
    },
  },
};
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
for (const [name, m] of Object.entries(messages)) writeFileSync(path.join(out, name), encodeFrame(m));
// And a stream of several frames, as the agent reads them.
writeFileSync(
  path.join(out, "stream"),
  Buffer.concat(
    Object.values(messages)
      .slice(0, 5)
      .map((m) => encodeFrame(m)),
  ),
);
console.log(`wrote ${Object.keys(messages).length + 1} seeds to ${out}`);
