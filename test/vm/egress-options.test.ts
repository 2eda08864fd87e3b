// The egress proxy's option values (secrets, egressProxy) and the sandbox CA's certificates. No VMs.
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";

import { InvalidArgumentError } from "../../src/errors.js";
import { GUEST_CA_PATH, GUEST_TRUST_ENV, SandboxCA } from "../../src/vm/egress/ca.js";
import { checkSecrets, hostMatches, interceptRules, secretEnv } from "../../src/vm/egress/secrets.js";
import { checkEgressProxy } from "../../src/vm/egress/upstream.js";

const bad = (value: unknown) => {
  try {
    checkSecrets(value);
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return (err as Error).message;
  }
  throw new Error("accepted");
};

describe("the secrets option", () => {
  it("gives a secret the same placeholder in every sandbox of a host, from a key of its own, which tells nothing of the value", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "msb-placeholders-"));
    const saved = process.env.MSB_CACHE_DIR;
    process.env.MSB_CACHE_DIR = dir;
    try {
      const one = (value: string) => checkSecrets({ K: { value, hosts: ["example.org"] } })[0]!.placeholder;
      expect(one("v1")).toBe(one("v1"));
      expect(one("v1")).not.toBe(one("v2"));
      expect(one("v1")).not.toContain(createHash("sha256").update("K\0v1").digest("hex").slice(0, 32));
      expect(statSync(path.join(dir, "secret-placeholders.key")).mode & 0o777).toBe(0o600);
      expect(checkSecrets({ K: { value: "v1", hosts: ["example.org"], placeholder: `msb_${"0".repeat(32)}` } })[0]!.placeholder).toBe(`msb_${"0".repeat(32)}`);
    } finally {
      if (saved === undefined) delete process.env.MSB_CACHE_DIR;
      else process.env.MSB_CACHE_DIR = saved;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("checks, canonicalizes and gives each secret a placeholder of its own", () => {
    const [s, t] = checkSecrets({
      GH_TOKEN: { value: "ghp_real", hosts: ["API.GitHub.com", "*.githubusercontent.com"], headers: ["Authorization"] },
      other: { value: "v", hosts: ["example.org"] },
    });
    expect(s).toMatchObject({ name: "GH_TOKEN", value: "ghp_real", hosts: ["api.github.com", "*.githubusercontent.com"], headers: ["authorization"] });
    expect(s!.placeholder).toMatch(/^msb_[0-9a-f]{32}$/);
    expect(t!.headers).toBeUndefined();
    expect(t!.placeholder).not.toBe(s!.placeholder);
    expect(secretEnv([s!, t!])).toEqual({ GH_TOKEN: s!.placeholder, other: t!.placeholder });
    expect(interceptRules([s!, t!])).toEqual(["~d:api.github.com", "~s:githubusercontent.com", "~d:example.org"]);
    // A secret keeps its placeholder across an update: the guest already holds it.
    const [again] = checkSecrets({ GH_TOKEN: { value: "new", hosts: ["api.github.com"] } }, [s!, t!]);
    expect(again!.placeholder).toBe(s!.placeholder);
  });

  it("refuses bad values, naming them and what to do, never echoing a value", () => {
    expect(bad([])).toMatch(/secrets must be an object/);
    expect(bad({ "1X": { value: "v", hosts: ["a.com"] } })).toMatch(/secret name "1X" is invalid.*letters, digits and _/);
    expect(bad({ A: { value: "v", hosts: ["a.com"], header: ["x"] } })).toMatch(/unknown secret option "header": did you mean "headers"\?/);
    expect(bad({ A: { value: "", hosts: ["a.com"] } })).toMatch(/secrets\.A\.value must be a non-empty string/);
    expect(bad({ A: { value: "top\nsecret", hosts: ["a.com"] } })).toMatch(/CR or LF/);
    expect(bad({ A: { value: "top\nsecret", hosts: ["a.com"] } })).not.toMatch(/top/);
    expect(bad({ A: { value: "x".repeat(64 * 1024 + 1), hosts: ["a.com"] } })).toMatch(/at most 65536/);
    expect(bad({ A: { value: "v", hosts: [] } })).toMatch(/hosts must be a non-empty array/);
    expect(bad({ A: { value: "v", hosts: ["10.0.0.0/8"] } })).toMatch(/hosts\[0\] "10.0.0.0\/8" is an address; a secret is scoped to names/);
    expect(bad({ A: { value: "v", hosts: ["not a host"] } })).toMatch(/hosts\[0\] "not a host" is invalid/);
    expect(bad({ A: { value: "v", hosts: ["a.com"], headers: [] } })).toMatch(/omit it to allow every header/);
    expect(bad({ A: { value: "v", hosts: ["a.com"], headers: ["x y"] } })).toMatch(/headers\[0\] "x y" is not a header name/);
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`S${i}`, { value: "v", hosts: ["a.com"] }]));
    expect(bad(many)).toMatch(/at most 64/);
  });

  it("matches hosts by name and below a suffix, not the suffix's own name", () => {
    expect(hostMatches("api.example.com", ["api.example.com"])).toBe(true);
    expect(hostMatches("a.b.example.org", ["*.example.org"])).toBe(true);
    expect(hostMatches("example.org", ["*.example.org"])).toBe(false);
    expect(hostMatches("badexample.org", ["*.example.org"])).toBe(false);
  });
});

describe("the egressProxy option", () => {
  it("takes http and socks5 URLs with credentials", () => {
    expect(checkEgressProxy("http://proxy.corp:3128")).toEqual({ protocol: "http", host: "proxy.corp", port: 3128 });
    expect(checkEgressProxy("socks5://u%40x:p%3Aw@[::1]:1080")).toEqual({ protocol: "socks5", host: "::1", port: 1080, username: "u@x", password: "p:w" });
  });
  it("refuses anything else clearly, without repeating a password", () => {
    const msg = (v: unknown) => {
      try {
        checkEgressProxy(v);
      } catch (err) {
        expect(err).toBeInstanceOf(InvalidArgumentError);
        return (err as Error).message;
      }
      throw new Error("accepted");
    };
    expect(msg("https://u:hunter2@proxy:443")).toMatch(/scheme "https:", which is not supported: use "http:\/\/host:port"/);
    expect(msg("https://u:hunter2@proxy:443")).not.toMatch(/hunter2/);
    expect(msg("http://proxy")).toMatch(/needs a host and a port/);
    expect(msg("http://proxy:8080/path")).toMatch(/path, query or fragment/);
    expect(msg(8080)).toMatch(/is not a URL/);
  });
});

describe("the sandbox CA", () => {
  it("is a P-256 CA whose leaves name one host and chain to it", async () => {
    const ca = await SandboxCA.create("test");
    const root = new X509Certificate(ca.certificatePem);
    expect(root.ca).toBe(true);
    expect(root.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    const leaf = new X509Certificate(await ca.leafPem("api.example.com"));
    expect(leaf.subjectAltName).toBe("DNS:api.example.com");
    expect(leaf.ca).toBe(false);
    expect(leaf.checkIssued(root)).toBe(true);
    expect(leaf.verify(root.publicKey)).toBe(true);
    // Short-lived: about a day, starting a little in the past for a guest clock that lags.
    const life = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    expect(life).toBeLessThanOrEqual(26 * 3600_000);
    expect(new X509Certificate(await ca.leafPem("192.0.2.1")).subjectAltName).toBe("IP Address:192.0.2.1");
    await expect(ca.leafPem("bad name,CN=x")).rejects.toThrow(/not a host name/);
    // Contexts are made once per name.
    expect(ca.leafContext("a.example")).toBe(ca.leafContext("A.example"));
  });
  it("tells where the guest keeps it and what its processes are told", () => {
    expect(GUEST_TRUST_ENV.NODE_EXTRA_CA_CERTS).toBe(GUEST_CA_PATH);
    expect(GUEST_TRUST_ENV.SSL_CERT_FILE).toBe(GUEST_TRUST_ENV.REQUESTS_CA_BUNDLE);
  });
});
