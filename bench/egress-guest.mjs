#!/usr/bin/env node
// What the egress enforcement costs a guest, measured from inside it, in the small internet the
// tests build (test/sandbox/netns/harness.mjs; root, network namespaces):
//   connect: sequential TCP connects (and closes) by the guest's Python to an admitted public
//            address, under msb-vmm's seccomp supervisor (this tree) and under the LD_PRELOAD
//            library it replaced (OLD_DIST: the dist/ of a build of the tree before, e.g. a
//            worktree of 032d46b); interleaved rounds, a fresh sandbox each, median per connect;
//   https:   a 32 MiB download by the guest's curl from the same HTTPS server, once through the
//            interception (a secret names the host) and once not (a name no secret names, on an
//            address of its own), interleaved in one sandbox, median MB/s.
// Writes bench/results/egress-guest.{json,md}.
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { buildInternet, HOST, PUBLIC, removeInternet, TEST_CA, usable } from "../test/sandbox/netns/harness.mjs";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROUNDS = 5;
const CONNECTS = 200;
const DOWNLOADS = 7;
const SIZE = 32 * 1024 * 1024;

// The guest's connect loop: microseconds per connect+close, the median of CONNECTS.
const connectLoop =
  "import socket, statistics, time\n" +
  "ts = []\n" +
  `for _ in range(${CONNECTS}):\n` +
  "    t = time.perf_counter()\n" +
  `    s = socket.create_connection(('${PUBLIC}', 80), 10)\n` +
  "    ts.append(time.perf_counter() - t)\n" +
  "    s.close()\n" +
  "print(round(statistics.median(ts) * 1e6))\n";

// In the host's namespace: one sandbox of the library at `dist`, `mode` "connect" or "https".
async function inner(dist, mode) {
  const { CustomSandbox } = await import(path.join(dist, "index.js"));
  const secrets = { K: { value: "bench-value", hosts: ["api.internet.test"] } };
  const sb = await CustomSandbox.create({ image: "local:python", memory: 256, network: "public", ...(mode === "https" ? { secrets } : {}) });
  const sh = async (cmd) => (await (await sb.command.run("sh", ["-c", cmd])).output()).trim();
  try {
    if (mode === "connect") return { us: Number(await sh(`python3 -c "${connectLoop}"`)) };
    // The guest trusts the test CA only for the host it reaches directly; the intercepted one
    // presents the sandbox's CA, which the guest trusts already.
    await sb.fs.write("/tmp/test-ca.pem", readFileSync(process.env.NODE_EXTRA_CA_CERTS));
    const speed = (url, extra) => sh(`curl -sS -o /dev/null -w '%{speed_download}' ${extra} -H "Authorization: $K" ${url}/bytes/${SIZE}`);
    const out = { intercepted: [], direct: [] };
    for (let i = 0; i < DOWNLOADS; i++) {
      out.intercepted.push(Number(await speed("https://api.internet.test", "")) / 2 ** 20);
      out.direct.push(Number(await speed("https://plain.test", "--cacert /tmp/test-ca.pem")) / 2 ** 20);
    }
    return out;
  } finally {
    await sb.stop();
  }
}

if (process.argv[2] === "inner") {
  console.log(JSON.stringify(await inner(process.argv[3], process.argv[4])));
  process.exit(0);
}

if (!usable) throw new Error("bench/egress-guest.mjs builds network namespaces: run it as root on Linux");
const oldDist = process.env.OLD_DIST;
if (!oldDist) throw new Error("set OLD_DIST to the dist/ of a build from before the supervisor (with msb-netpolicy.so), e.g. a worktree of 032d46b");
const run = (dist, mode) => {
  const r = spawnSync("ip", ["netns", "exec", HOST, process.execPath, fileURLToPath(import.meta.url), "inner", dist, mode], {
    encoding: "utf8",
    env: { ...process.env, NODE_EXTRA_CA_CERTS: TEST_CA },
  });
  if (r.status !== 0) throw new Error(`${mode} with ${dist} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1));
};

await buildInternet();
let result;
try {
  const dist = path.join(here, "..", "dist");
  const connect = { supervisor: [], preload: [] };
  for (let r = 0; r < ROUNDS; r++) {
    // Alternating which goes first, so neither always runs on a cooler machine.
    const order = r % 2 ? ["preload", "supervisor"] : ["supervisor", "preload"];
    for (const which of order) connect[which].push(run(which === "supervisor" ? dist : oldDist, "connect").us);
  }
  const https = run(dist, "https");
  result = {
    date: new Date().toISOString().slice(0, 10),
    machine: machine(),
    connects: CONNECTS,
    rounds: ROUNDS,
    downloads: DOWNLOADS,
    size: SIZE,
    connect,
    https,
  };
} finally {
  removeInternet();
}

const ms = (us) => `${(us / 1000).toFixed(2)} ms`;
const c = { supervisor: median(result.connect.supervisor), preload: median(result.connect.preload) };
const h = { intercepted: median(result.https.intercepted), direct: median(result.https.direct) };
const m = result.machine;
writeFileSync(path.join(here, "results", "egress-guest.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(
  path.join(here, "results", "egress-guest.md"),
  `# Egress enforcement, seen from the guest

${result.date} — ${m.cpu}, ${m.cpus} cores, ${m.memoryGiB} GiB, ${m.kernel}, Node ${m.node}; QEMU under TCG.
The test internet of test/sandbox/netns/harness.mjs; \`local:python\` sandboxes, network "public".

| measure | before | now | ratio |
| --- | --- | --- | --- |
| TCP connect + close to a public address (median of ${CONNECTS}, median of ${ROUNDS} sandboxes each, interleaved) | ${ms(c.preload)} (LD_PRELOAD in QEMU) | ${ms(c.supervisor)} (seccomp supervisor) | ${(c.supervisor / c.preload).toFixed(2)} |
| HTTPS download of 32 MiB by curl (median of ${DOWNLOADS}, interleaved in one sandbox) | ${h.direct.toFixed(1)} MiB/s (not intercepted) | ${h.intercepted.toFixed(1)} MiB/s (intercepted for a secret) | ${(h.direct / h.intercepted).toFixed(2)} |

Each connect's rounds: supervisor ${result.connect.supervisor.map(ms).join(", ")}; preload ${result.connect.preload.map(ms).join(", ")}.
Downloads (MiB/s): intercepted ${result.https.intercepted.map((x) => x.toFixed(1)).join(", ")}; direct ${result.https.direct.map((x) => x.toFixed(1)).join(", ")}.
`,
);
console.log(readFileSync(path.join(here, "results", "egress-guest.md"), "utf8"));
