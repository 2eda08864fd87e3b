// Secrets, readable refusals, live policy changes and an upstream proxy, against the small
// internet of netns/harness.ts: its web servers answer HTTPS with a certificate of a test CA, which
// the program that owns the sandbox trusts (NODE_EXTRA_CA_CERTS), as a user's host trusts the
// public CAs. The guest's curl and Python make the requests; the servers echo the headers they got.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { buildInternet, HOST, OTHER, PUBLIC, removeInternet, TEST_CA, usable } from "./netns/harness.mjs";

const here = path.join(path.dirname(fileURLToPath(import.meta.url)), "netns");
const VALUE = "s3cr3t-Value-9f2c";
const OTHER_VALUE = "other-Value-77aa";

interface Result {
  outputs: string[];
  refusals: number;
  secretRefusals: number;
  confinement: { network: string };
}

// Creates a sandbox with `options` in the host's namespace and takes `steps` (netns/steps.mjs).
function inSandbox(options: object, steps: object[]): Result {
  const r = spawnSync("ip", ["netns", "exec", HOST, process.execPath, path.join(here, "steps.mjs"), JSON.stringify(options), JSON.stringify(steps)], {
    encoding: "utf8",
    timeout: 240_000,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: TEST_CA },
  });
  if (r.status !== 0) throw new Error(`the sandbox program failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as Result;
}

const headers = (json: string) => (JSON.parse(json) as { headers: Record<string, string> }).headers;
const curl = (url: string, header: string) => ({ run: `curl -sS --max-time 20 ${url} -H "${header}"` });

beforeAll(async () => {
  if (usable) await buildInternet();
}, 60_000);

afterAll(() => {
  if (usable) removeInternet();
});

describe.skipIf(!usable)("egress: secrets, refusals and live changes", () => {
  it("a secret reaches only its host, only in its header, over HTTPS and HTTP, and the guest never holds it", () => {
    const secrets = {
      API_KEY: { value: VALUE, hosts: ["api.internet.test"], headers: ["Authorization"] },
      OTHER_KEY: { value: OTHER_VALUE, hosts: ["*.internet.test"] },
    };
    const python =
      "import os, urllib.request; " +
      "r = urllib.request.Request('https://api.internet.test/headers', headers={'Authorization': 'Bearer ' + os.environ['API_KEY']}); " +
      "print(urllib.request.urlopen(r, timeout=20).read().decode())";
    const { outputs, secretRefusals } = inSandbox({ image: "local:python", network: "public", secrets }, [
      { run: "echo $API_KEY" },
      curl("https://api.internet.test/headers", "Authorization: Bearer $API_KEY"),
      { run: `python3 -c "${python}"` },
      curl("http://api.internet.test/headers", "Authorization: Bearer $API_KEY"),
      // A header the secret is not named for: refused, not sent.
      { run: 'curl -sS --max-time 20 -w " %{http_code}" https://api.internet.test/headers -H "X-Api-Key: $API_KEY"' },
      // The placeholder bound for a host of another secret: refused, not sent.
      { run: 'curl -sS --max-time 20 -w " %{http_code}" https://other.internet.test/headers -H "Authorization: Bearer $API_KEY"' },
      // A secret for every header of every name below internet.test.
      curl("https://other.internet.test/headers", "X-Token: $OTHER_KEY"),
      // A host no secret names, on an address of its own, is not intercepted: it gets what the
      // guest sent, the placeholder. One that shares its address with a secret's host is refused.
      curl("http://plain.test/headers", "Authorization: Bearer $API_KEY"),
      curl("http://pub.test/headers", "Authorization: Bearer $API_KEY"),
      { run: `grep -l -r -e '${VALUE}' -e '${OTHER_VALUE}' /proc/[0-9]*/environ /etc 2>/dev/null | wc -l; env | grep -c -e '${VALUE}' -e '${OTHER_VALUE}'` },
      // A refused HTTPS connection: the proxy, holding a CA the guest trusts, answers it too.
      { run: 'curl -sS --max-time 20 -w " %{http_code}" https://10.9.9.9/' },
      // A fork trusts the same CA and holds the same placeholders; a resumed sandbox gets a new CA.
      { fork: 'curl -sS --max-time 20 https://api.internet.test/headers -H "Authorization: Bearer $API_KEY"' },
      { pause: true },
      curl("https://api.internet.test/headers", "Authorization: Bearer $API_KEY"),
    ]);
    const placeholder = outputs[0]!;
    expect(placeholder).toMatch(/^msb_[0-9a-f]{32}$/);
    expect(headers(outputs[1]!).authorization).toBe(`Bearer ${VALUE}`);
    expect(headers(outputs[2]!).authorization).toBe(`Bearer ${VALUE}`);
    expect(headers(outputs[3]!).authorization).toBe(`Bearer ${VALUE}`);
    expect(outputs[4]).toMatch(/secret API_KEY may not be sent in header x-api-key.* 403$/s);
    expect(outputs[5]).toMatch(/secret API_KEY may not be sent to other\.internet\.test.* 403$/s);
    expect(headers(outputs[6]!)["x-token"]).toBe(OTHER_VALUE);
    expect(headers(outputs[7]!).authorization).toBe(`Bearer ${placeholder}`);
    expect(outputs[8]).toBe("microsandbox: secret API_KEY may not be sent to pub.test");
    expect(outputs[9]).toBe("0\n0");
    expect(outputs[10]).toMatch(/^microsandbox: 10\.9\.9\.9:443 is refused by the sandbox's network policy \(10\.0\.0\.0\/8 is not a public address.* 403$/s);
    expect(headers(outputs[11]!).authorization).toBe(`Bearer ${VALUE}`);
    expect(outputs[12]).toBe("resumed");
    expect(headers(outputs[13]!).authorization).toBe(`Bearer ${VALUE}`);
    expect(secretRefusals).toBe(3);
  });

  it("a refused HTTP request gets a 403 naming the rule; updateNetwork flips admission and closes a refused open connection", () => {
    const hold =
      "python3 -u -c \"import socket; s = socket.create_connection(('" +
      OTHER +
      "', 80), 20); print('open'); s.settimeout(60); print('closed' if s.recv(1) == b'' else 'data')\"";
    const { outputs, refusals } = inSandbox({ image: "local:python", network: { deny: ["pub.test"] } }, [
      { run: "curl -sS --max-time 20 -i http://pub.test/" },
      // Without secrets there is no CA for a readable HTTPS refusal: a plain one.
      { run: "curl -sS --max-time 20 https://pub.test/" },
      { run: `curl -sS --max-time 20 http://${OTHER}/` },
      { run: "python3 -c \"import socket; socket.create_connection(('10.9.9.9', 22), 20)\" 2>&1 | tail -1" },
      { hold },
      { update: { network: { deny: ["pub.test", OTHER] } } },
      { wait: true },
      { run: `curl -sS --max-time 20 -w " %{http_code}" http://${OTHER}/` },
      { update: { network: "public" } },
      { run: "curl -sS --max-time 20 http://pub.test/" },
    ]);
    expect(outputs[0]).toMatch(/^HTTP\/1\.1 403 Forbidden/);
    expect(outputs[0]).toMatch(/192\.0\.2\.10:80 is refused by the sandbox's network policy \(network\.deny has pub\.test\)/);
    expect(outputs[1]).toMatch(/curl: \(7\) Failed to connect to pub\.test port 443/);
    expect(outputs[2]).toBe(`internet ${OTHER}`);
    expect(outputs[3]).toMatch(/ConnectionRefusedError/);
    expect(outputs[4]).toBe("open");
    expect(outputs[6]).toMatch(/^open\n(closed|.*ConnectionResetError)/s);
    expect(outputs[7]).toMatch(/network\.deny has 198\.51\.100\.7.* 403$/s);
    expect(outputs[9]).toBe(`internet ${PUBLIC}`);
    expect(refusals).toBe(4);
  });
});

describe.skipIf(!usable)("egress through the user's proxy", () => {
  let proxy: ChildProcess | undefined;
  afterAll(() => proxy?.kill("SIGKILL"));

  it("sends every connection through an HTTP CONNECT proxy, and nowhere once it is down", async () => {
    // A CONNECT proxy on the host's loopback that logs each tunnel and stops after the first.
    const script =
      "const net=require('net');const s=require('http').createServer();" +
      "s.on('connect',(q,c,h)=>{console.log('CONNECT '+q.url);const [a,p]=q.url.split(':');const u=net.connect(+p,a,()=>{c.write('HTTP/1.1 200 OK\\r\\n\\r\\n');u.write(h);u.pipe(c);c.pipe(u)});" +
      "u.on('error',()=>c.destroy());c.on('error',()=>u.destroy());c.on('close',()=>{console.log('done');process.exit(0)})});" +
      "s.listen(3128,'127.0.0.1',()=>console.log('ready'))";
    proxy = spawn("ip", ["netns", "exec", HOST, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    let log = "";
    await new Promise<void>((resolve) =>
      proxy!.stdout!.on("data", (d: Buffer) => {
        log += d.toString();
        if (log.includes("ready")) resolve();
      }),
    );
    const { outputs } = inSandbox({ image: "local:python", network: "public", egressProxy: "http://127.0.0.1:3128" }, [
      { run: "curl -sS --max-time 20 http://pub.test/" },
      { run: "sleep 1; curl -sS --max-time 20 http://pub.test/ || echo failed" },
    ]);
    expect(outputs[0]).toBe(`internet ${PUBLIC}`);
    await once(proxy, "close"); // it ended after its one tunnel; its log is all read
    expect(log).toContain(`CONNECT ${PUBLIC}:80`);
    // The proxy exited after its one tunnel: nothing goes out directly.
    expect(outputs[1]).toMatch(/failed$/);
  });
});
