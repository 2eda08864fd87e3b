// E2B's network and secrets against msb server, with the real e2b 2.51 SDK: the server runs in the
// namespace that stands for the host in the small internet of test/sandbox/netns (root on Linux),
// where api.internet.test and other.internet.test echo the headers they get at /headers; the SDK
// reaches it through netns-server.mjs's unix socket. The guest's Python and curl make the requests.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { rmSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { buildInternet, HOST, removeInternet, TEST_CA, usable } from "../sandbox/netns/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const KEY = "e2b-network-key";
const VALUE = "tok-Value-5e1f9c";
const ROTATED = "tok-Rotated-77b0";
const socketPath = path.join(os.tmpdir(), `msbt-e2b-${process.pid}.sock`);

type SdkModule = typeof import("e2b-251");
let sdk: SdkModule;
let child: ChildProcess | undefined;
let bridge: Server | undefined;

beforeAll(async () => {
  if (!usable) return;
  await buildInternet();
  // The server trusts the test internet's CA, as a user's host trusts the public ones.
  child = spawn("ip", ["netns", "exec", HOST, process.execPath, path.join(here, "netns-server.mjs"), socketPath, KEY], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, NODE_EXTRA_CA_CERTS: TEST_CA },
  });
  await new Promise<void>((resolve, reject) => {
    child!.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child!.once("exit", (code) => reject(new Error(`netns-server.mjs exited (${code})`)));
  });
  bridge = createServer((c) => {
    const up = connect(socketPath);
    c.pipe(up).pipe(c);
    const end = () => (c.destroy(), up.destroy());
    c.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
  });
  bridge.listen(0, "127.0.0.1");
  await once(bridge, "listening");
  const url = `http://127.0.0.1:${(bridge.address() as { port: number }).port}`;
  Object.assign(process.env, { E2B_API_URL: url, E2B_SANDBOX_URL: url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  sdk = (await import("e2b-251")) as unknown as SdkModule;
  // Secrets are kept in the cache: what a failed run left of this key's goes first.
  for (const s of await sdk.Secret.list().nextItems()) await sdk.Secret.destroy(s.secretId);
}, 120_000);

afterAll(async () => {
  if (!usable) return;
  bridge?.close();
  if (child && child.exitCode === null) {
    child.kill("SIGTERM");
    await once(child, "exit");
  }
  rmSync(socketPath, { force: true });
  removeInternet();
}, 60_000);

/** Resolves once `check` holds, polling; fails after `ms`, saying what was last seen. */
async function until(check: () => boolean, what: () => string, ms = 90_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const headersAt = (json: string) => (JSON.parse(json) as { headers: Record<string, string> }).headers;

describe.skipIf(!usable)("e2b 2.51: network and secrets", () => {
  it("updateNetwork: a denied host becomes allowed and an allowed one denied, under one running command", async () => {
    const { Sandbox } = sdk;
    const sb = await Sandbox.create("base", { network: { allowOut: ["api.internet.test"], denyOut: ({ allTraffic }) => [allTraffic] } });
    try {
      // One process for the whole test: a line per round, "api=ok other=no", until /tmp/stop exists.
      const loop = [
        "import os, time, urllib.request",
        "def get(h):",
        "    try: return 'ok' if urllib.request.urlopen('http://' + h + '/', timeout=5).status == 200 else 'no'",
        "    except Exception: return 'no'",
        "while not os.path.exists('/tmp/stop'):",
        "    print('pid=%d api=%s other=%s' % (os.getpid(), get('api.internet.test'), get('other.internet.test')), flush=True)",
        "    time.sleep(0.3)",
      ].join("\n");
      await sb.files.write("/tmp/loop.py", loop);
      let out = "";
      const handle = await sb.commands.run("python3 /tmp/loop.py", {
        background: true,
        onStdout: (d: string) => {
          out += d;
        },
      });
      const last = () => out.trim().split("\n").at(-1) ?? "";
      const seen = (state: string) => () => last().endsWith(state);
      await until(seen("api=ok other=no"), last);

      await sb.updateNetwork({ allowOut: ["other.internet.test"], denyOut: ({ allTraffic }) => [allTraffic] });
      const flipped = out.length;
      await until(() => seen("api=no other=ok")() && out.length > flipped, last);
      expect((await sb.getInfo()).network?.allowOut).toEqual(["other.internet.test"]);

      await sb.files.write("/tmp/stop", "");
      const result = await handle.wait();
      expect(result.exitCode).toBe(0);
      // Both states came from the one process, in order: no line of the old state after the new.
      const lines = out.trim().split("\n");
      expect(new Set(lines.map((l) => l.split(" ")[0]))).toEqual(new Set([`pid=${lines[0]!.split(" ")[0]!.slice(4)}`]));
      const firstNew = lines.findIndex((l) => l.endsWith("api=no other=ok"));
      expect(lines.slice(0, firstNew).some((l) => l.endsWith("api=ok other=no"))).toBe(true);
      expect(lines.slice(firstNew).every((l) => !l.endsWith("api=ok other=no"))).toBe(true);
    } finally {
      await sb.kill();
    }
  }, 300_000);

  it("a secret in a header rule reaches only its host, takes a new value when updated, and no route returns it", async () => {
    const { Sandbox, Secret } = sdk;
    const created = await Secret.create("api-token", VALUE, { metadata: { purpose: "test" } });
    expect(created).toMatchObject({ name: "api-token", version: 1, metadata: { purpose: "test" } });
    const sb = await Sandbox.create("base", {
      network: {
        allowOut: ["api.internet.test", "other.internet.test"],
        denyOut: ({ allTraffic }) => [allTraffic],
        rules: { "api.internet.test": [{ transform: { headers: { Authorization: `Bearer ${Secret.fill("api-token")}` } } }] },
      },
    });
    try {
      const curl = async (url: string) => (await sb.commands.run(`curl -sS --max-time 20 ${url} -H 'Authorization: guest-sent'`)).stdout;
      expect(headersAt(await curl("https://api.internet.test/headers")).authorization).toBe(`Bearer ${VALUE}`);
      expect(headersAt(await curl("http://api.internet.test/headers")).authorization).toBe(`Bearer ${VALUE}`);
      // The other host, which no rule names, is not intercepted: it gets what the guest sent, never
      // the value (its certificate is the test internet's, which only the host trusts: -k).
      for (const url of ["http://other.internet.test/headers", "-k https://other.internet.test/headers"]) {
        const other = await curl(url);
        expect(headersAt(other).authorization).toBe("guest-sent");
        expect(other).not.toContain(VALUE);
      }
      // The guest holds the value nowhere: not in any environment, nor in /etc.
      const found = await sb.commands.run(`grep -l -r -e '${VALUE}' /proc/[0-9]*/environ /etc 2>/dev/null | wc -l; env | grep -c '${VALUE}' || true`);
      expect(found.stdout.trim()).toBe("0\n0");

      await Secret.update("api-token", ROTATED);
      expect((await Secret.getInfo("api-token")).version).toBe(2);
      expect(headersAt(await curl("https://api.internet.test/headers")).authorization).toBe(`Bearer ${ROTATED}`);
      // A secret some sandbox's rules name cannot go.
      await expect(Secret.destroy("api-token")).rejects.toThrow(/named by the network rules of sandbox/);

      const info = await sb.getInfo();
      expect(info.network?.rules?.["api.internet.test"]?.[0]?.transform?.headers?.Authorization).toBe(`Bearer ${Secret.fill("api-token")}`);
      const answers = [
        info,
        await Sandbox.list().nextItems(),
        await Secret.list().nextItems(),
        await Secret.getInfo(created.secretId),
        await Secret.getInfo("api-token"),
      ];
      for (const a of answers) {
        expect(JSON.stringify(a)).not.toContain(VALUE);
        expect(JSON.stringify(a)).not.toContain(ROTATED);
      }
    } finally {
      await sb.kill();
    }
    expect(await Secret.destroy("api-token")).toBe(true);
    expect(await Secret.exists("api-token")).toBe(false);
    expect(await Secret.list().nextItems()).toEqual([]);
  }, 300_000);

  it("allowInternetAccess false refuses; an update that clears it opens the internet; what is not served is refused by name", async () => {
    const { Sandbox, Secret } = sdk;
    // Refused before any VM: a secret this key does not have, and what this server does not do.
    await expect(
      Sandbox.create("base", { network: { rules: { "api.internet.test": [{ transform: { headers: { "X-Key": Secret.fill("nope") } } }] } } }),
    ).rejects.toThrow(/names secret "nope", which this API key does not have/);
    await expect(Sandbox.create("base", { network: { maskRequestHost: "msb.example.com" } })).rejects.toThrow(/maskRequestHost is not supported/);

    // Created with no network options, a sandbox reaches the internet, as E2B's do, and not the host.
    const bare = await Sandbox.create("base");
    try {
      const status = (url: string) => `curl -sS --max-time 20 -o /dev/null -w '%{http_code}' ${url} || true`;
      expect((await bare.commands.run(status("http://api.internet.test/"))).stdout).toBe("200");
      expect((await bare.commands.run(status("http://10.0.2.2:8080/"))).stdout).toBe("000");
    } finally {
      await bare.kill();
    }

    const sb = await Sandbox.create("base", { allowInternetAccess: false });
    try {
      expect((await sb.getInfo()).allowInternetAccess).toBe(false);
      const get = "curl -sS --max-time 20 -w ' %{http_code}' http://api.internet.test/ || true";
      expect((await sb.commands.run(get)).stdout).toMatch(/refused by the sandbox's network policy.* 403$/s);

      const refusal = (p: Promise<unknown>) =>
        p.then(
          () => undefined,
          (e: { statusCode?: number; message: string }) => ({ status: e.statusCode, message: e.message }),
        );
      const iam = sb.updateNetwork({ rules: { "api.internet.test": [{ transform: ({ iam }) => ({ headers: { Authorization: iam.tokens.aws! } }) }] } });
      expect(await refusal(iam)).toMatchObject({ status: 400, message: expect.stringMatching(/workload identity tokens \(iam\) are not supported/) });
      expect(await refusal(sb.updateNetwork({ egressProxy: { address: "127.0.0.1:1080" } }))).toMatchObject({
        status: 400,
        message: expect.stringMatching(/egressProxy cannot change on a running sandbox/),
      });
      expect(await refusal(sb.updateNetwork({ allowOut: ["not a host"] }))).toMatchObject({
        status: 400,
        message: expect.stringMatching(/"not a host" is invalid/),
      });
      // Still refused: a refused update changed nothing.
      expect((await sb.commands.run(get)).stdout).toMatch(/ 403$/);

      await sb.updateNetwork({});
      expect((await sb.commands.run(get)).stdout).toMatch(/^internet 192\.0\.2\.10\n 200$/);
    } finally {
      await sb.kill();
    }
  }, 300_000);
});
