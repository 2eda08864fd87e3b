// The test's stand-in for the internet, run inside its own network namespace by netns.test.ts:
// an HTTP server on port 80 and an HTTPS one on 443 (certificate and key from the directory in
// argv[4]) of every address the namespace has, answering with the address it was reached on, or
// at /headers with the request's Host and headers as JSON, at /bytes/N with N bytes; and a DNS
// server on ADDRESS:53 answering A queries from a fixed table (JSON in argv[3]) and NXDOMAIN
// otherwise. Prints "ready" once the DNS server listens.
import { createSocket } from "node:dgram";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import path from "node:path";

const [dnsAddress, table, tls] = [process.argv[2], JSON.parse(process.argv[3]), process.argv[4]];

const chunk = Buffer.alloc(1 << 20, 0x61);
// /bytes/N: N bytes (at most 1 GiB), for throughput benchmarks.
function bytes(res, n) {
  res.writeHead(200, { "content-length": n });
  const pump = () => {
    while (n > 0) {
      const part = chunk.subarray(0, Math.min(n, chunk.length));
      n -= part.length;
      if (!res.write(part)) return void res.once("drain", pump);
    }
    res.end();
  };
  pump();
}
const answer = (req, res) => {
  const size = /^\/bytes\/(\d{1,10})$/.exec(req.url ?? "");
  if (size && Number(size[1]) <= 2 ** 30) return bytes(res, Number(size[1]));
  if (req.url === "/headers") return res.end(`${JSON.stringify({ host: req.headers.host, headers: req.headers })}\n`);
  res.end(`internet ${req.socket.localAddress}\n`);
};
createServer(answer).listen(80, "0.0.0.0");
createHttpsServer({ cert: readFileSync(path.join(tls, "cert.pem")), key: readFileSync(path.join(tls, "key.pem")) }, answer).listen(443, "0.0.0.0");

// The question's name, type and where the question ends; undefined for anything but one plain
// query: a datagram is whatever a test (or a guest) sends, and a bad one must not end this server.
function question(msg) {
  if (msg.length < 12 || msg[2] & 0x80 || msg.readUInt16BE(4) !== 1) return undefined; // a header, a query, one question
  const labels = [];
  let at = 12;
  for (;;) {
    if (at >= msg.length) return undefined;
    const len = msg[at];
    if (len === 0) break;
    // A question's name is not compressed (0xc0 is a pointer); a label is at most 63 bytes.
    if (len > 63 || at + 1 + len > msg.length) return undefined;
    labels.push(msg.subarray(at + 1, at + 1 + len).toString());
    at += 1 + len;
  }
  const end = at + 5; // the root label, QTYPE and QCLASS
  if (end > msg.length || at + 1 - 12 > 255) return undefined; // a name is at most 255 bytes
  return { name: labels.join(".").toLowerCase(), type: msg.readUInt16BE(at + 1), end };
}

const dns = createSocket("udp4");
dns.on("message", (msg, from) => {
  const q = question(msg);
  if (!q) return;
  const { name, type, end } = q;
  const address = Object.hasOwn(table, name) ? table[name] : undefined; // not "constructor"
  const answers = address && type === 1 ? 1 : 0;
  const header = Buffer.alloc(12);
  msg.copy(header, 0, 0, 2); // id
  header.writeUInt16BE(0x8180 | (address ? 0 : 3), 2); // a response, recursion available; NXDOMAIN
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(answers, 6);
  const parts = [header, msg.subarray(12, end)];
  if (answers) {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc00c, 0); // the question's name
    rr.writeUInt16BE(1, 2); // A
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(300, 6);
    rr.writeUInt16BE(4, 10);
    address.split(".").forEach((o, i) => {
      rr.writeUInt8(Number(o), 12 + i);
    });
    parts.push(rr);
  }
  dns.send(Buffer.concat(parts), from.port, from.address, () => {}); // an unreachable asker is its own problem
});
dns.bind(53, dnsAddress, () => console.log("ready"));
