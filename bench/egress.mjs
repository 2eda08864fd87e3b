#!/usr/bin/env node
// Egress proxy benchmark: what interception costs an HTTPS client. One local HTTPS upstream; a
// client fetches from it directly, and through the egress proxy as a redirected guest connection
// would (TLS ended with a sandbox CA leaf, the request parsed, a new TLS leg upstream). Interleaved
// rounds, medians:
//   throughput: a 64 MiB download on a fresh connection
//   latency:    connect + TLS + GET of a small answer, until its first byte (a fresh guest
//               connection each time; the proxy's upstream leg is kept alive, as it is in use)
// Writes bench/results/egress.{json,md}. Needs `npm run build:ts`.
import { fork } from "node:child_process";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:https";
import { connect } from "node:net";
import path from "node:path";
import { connect as tlsConnect } from "node:tls";
import { fileURLToPath } from "node:url";
import { SandboxCA } from "../dist/vm/egress/ca.js";
import { EgressProxy } from "../dist/vm/egress/proxy.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIG = 64 * 1024 * 1024;
const ROUNDS = 7;
const LATENCY_RUNS = 60;
const NAME = "api.example.com";

// The upstream runs in a process of its own, as it would on another machine; the client and the
// proxy share this one (in use, the guest's client is in the VM and the proxy in the host's Node).
if (process.argv[2] === "upstream") {
  const upstreamCA = await SandboxCA.create("bench-upstream");
  const chunk = Buffer.alloc(1024 * 1024, 0x61);
  const upstream = createServer({ SNICallback: (n, cb) => void upstreamCA.leafContext(n).then((c) => cb(null, c), cb) }, (req, res) => {
    if (req.url === "/big") {
      res.writeHead(200, { "content-length": BIG });
      let left = BIG / chunk.length;
      const pump = () => {
        while (left > 0) {
          left--;
          if (!res.write(chunk)) return void res.once("drain", pump);
        }
        res.end();
      };
      pump();
    } else res.end("ok");
  });
  upstream.listen(0, "127.0.0.1");
  await once(upstream, "listening");
  process.send({ port: upstream.address().port, ca: upstreamCA.certificatePem });
  process.on("disconnect", () => process.exit(0));
  await new Promise(() => {});
}

const child = fork(fileURLToPath(import.meta.url), ["upstream"]);
const [{ port: upstreamPort, ca: upstreamCaPem }] = await once(child, "message");
const sandboxCA = await SandboxCA.create("bench-guest");
const proxy = await EgressProxy.start({ ca: sandboxCA, upstreamCAs: [upstreamCaPem], upstreamPorts: { 443: upstreamPort } });

/** A TLS connection as the client sees it: straight to the upstream, or redirected to the proxy. */
async function open(via) {
  const raw = connect(via === "direct" ? upstreamPort : proxy.port, "127.0.0.1");
  await once(raw, "connect");
  if (via === "proxy") proxy.redirect({ localPort: raw.localPort, address: "127.0.0.1", port: 443, kind: "intercept", rule: "", names: [NAME] });
  const tls = tlsConnect({ socket: raw, servername: NAME, ca: [via === "direct" ? upstreamCaPem : sandboxCA.certificatePem], ALPNProtocols: ["http/1.1"] });
  await once(tls, "secureConnect");
  return tls;
}

/** ms from the start of connecting to the first byte of the answer, and to its end; bytes read. */
async function fetchOnce(via, urlPath) {
  const t0 = performance.now();
  const socket = await open(via);
  return new Promise((resolve, reject) => {
    const req = request({ createConnection: () => socket, path: urlPath, headers: { host: NAME } }, (res) => {
      let first = 0;
      let bytes = 0;
      res.on("data", (c) => {
        if (!first) first = performance.now() - t0;
        bytes += c.length;
      });
      res.on("end", () => (socket.destroy(), resolve({ first, total: performance.now() - t0, bytes })));
    });
    req.on("error", reject);
    req.end();
  });
}

const mbps = { direct: [], proxy: [] };
const firstByte = { direct: [], proxy: [] };
// Warm both paths (leaf made, upstream connection open, JIT).
for (const via of ["direct", "proxy"]) await fetchOnce(via, "/small"), await fetchOnce(via, "/big");
for (let r = 0; r < ROUNDS; r++) {
  for (const via of r % 2 ? ["proxy", "direct"] : ["direct", "proxy"]) {
    const { total, bytes } = await fetchOnce(via, "/big");
    if (bytes !== BIG) throw new Error(`${via}: got ${bytes} bytes of ${BIG}`);
    mbps[via].push(BIG / 2 ** 20 / (total / 1e3));
  }
}
for (let r = 0; r < LATENCY_RUNS; r++) {
  for (const via of r % 2 ? ["proxy", "direct"] : ["direct", "proxy"]) firstByte[via].push((await fetchOnce(via, "/small")).first);
}
await proxy.close();
child.disconnect();

const result = {
  date: new Date().toISOString().slice(0, 10),
  machine: machine(),
  throughput: { directMiBps: median(mbps.direct), proxyMiBps: median(mbps.proxy), ratio: median(mbps.proxy) / median(mbps.direct), rounds: ROUNDS },
  firstByte: {
    directMs: median(firstByte.direct),
    proxyMs: median(firstByte.proxy),
    ratio: median(firstByte.proxy) / median(firstByte.direct),
    runs: LATENCY_RUNS,
  },
};
const fmt = (n, d = 1) => n.toFixed(d);
const md = `# Egress proxy benchmark

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
A local HTTPS upstream (its own process), fetched directly and through the egress proxy's interception
(TLS ended and made again, HTTP parsed; client and proxy share one process); interleaved, medians.

| measure | direct | intercepted | ratio |
| --- | --- | --- | --- |
| ${BIG / 2 ** 20} MiB HTTPS download, fresh connection (${ROUNDS} rounds) | ${fmt(result.throughput.directMiBps, 0)} MiB/s | ${fmt(result.throughput.proxyMiBps, 0)} MiB/s | ${fmt(result.throughput.ratio, 2)} |
| connect + TLS + GET until the first byte (${LATENCY_RUNS} runs) | ${fmt(result.firstByte.directMs, 2)} ms | ${fmt(result.firstByte.proxyMs, 2)} ms | ${fmt(result.firstByte.ratio, 2)} |
`;
writeFileSync(path.join(here, "results", "egress.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "egress.md"), md);
console.log(md);
