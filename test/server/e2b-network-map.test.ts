// How E2B's network configuration maps onto the library's options, without VMs: the policy
// allowOut and denyOut mean, the rules' headers with secrets resolved, the proxy's URL, what
// getInfo shows, and what is refused by name. e2b-network.test.ts shows it in sandboxes.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { Keys } from "../../src/server/auth.js";
import { checkE2bNetwork, E2bNetworks, networkInfo } from "../../src/server/e2b/network.js";
import { SecretStore } from "../../src/server/e2b/secrets.js";
import { E2bSandboxes } from "../../src/server/e2b/shared.js";
import { SandboxTable } from "../../src/server/sandboxes.js";

const dir = mkdtempSync(path.join(tmpdir(), "msb-secrets-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const store = new SecretStore(dir);
await store.create("anonymous", "tok", "the-value", {});
const networks = new E2bNetworks(new E2bSandboxes(new SandboxTable({ maxSandboxes: 1, memoryBudgetMiB: 1, maxPaused: 1 }), new Keys([])), store);
const map = (network: unknown, allowInternetAccess?: boolean) => networks.library("anonymous", checkE2bNetwork(network, allowInternetAccess));

describe("E2B network on the library's", () => {
  it("lets allowOut win over denyOut, as E2B does", () => {
    expect(map(undefined).network).toBe("public"); // nothing given: the internet, as E2B's default
    expect(map({}).network).toBe("public");
    expect(map(undefined, false).network).toEqual({ allow: [] });
    expect(map({ allowOut: ["api.example.com"], denyOut: ["0.0.0.0/0", "203.0.113.0/24"] }).network).toEqual({ allow: ["api.example.com"] });
    expect(map({ allowOut: ["203.0.113.9"], denyOut: ["203.0.113.0/24"] }).network).toEqual({ deny: ["203.0.113.0/24"], except: ["203.0.113.9"] });
    expect(map({ allowOut: ["x.example.com"] }).network).toEqual({ except: ["x.example.com"] });
    expect(map({ allowOut: ["0.0.0.0/0"], denyOut: ["0.0.0.0/0"] }).network).toBe("public");
  });

  it("sets each host's rule headers, later rules replacing earlier ones, with secrets resolved", () => {
    const { injectHeaders, egressProxy } = map({
      rules: {
        "api.example.com": [
          { transform: { headers: { authorization: "Bearer old", "X-Team": "a" } } },
          { transform: { headers: { Authorization: `Bearer \${e2b.secrets.TOK}` } } },
          {},
        ],
        "*.example.org": [{}],
      },
      egressProxy: { address: "proxy.example.com:1080", username: "u@x", password: "p:w" },
    });
    expect(injectHeaders).toEqual({ "api.example.com": { "X-Team": "a", Authorization: "Bearer the-value" } });
    expect(egressProxy).toBe("socks5://u%40x:p%3Aw@proxy.example.com:1080");
  });

  it("shows the configuration without the proxy's password, placeholders unresolved", () => {
    const net = checkE2bNetwork(
      {
        rules: { "a.example.com": [{ transform: { headers: { k: `\${e2b.secrets.tok}` } } }] },
        egressProxy: { address: "p.example.com:1", username: "u", password: "pw" },
      },
      true,
    );
    const shown = JSON.stringify(networkInfo(net));
    expect(shown).toContain(`\${e2b.secrets.tok}`);
    expect(shown).not.toContain("pw");
    expect(networkInfo(net)).toMatchObject({ allowInternetAccess: true, network: { egressProxy: { address: "p.example.com:1", username: "u" } } });
    // Nothing given at create: the public internet, as E2B's default.
    expect(networkInfo(checkE2bNetwork(undefined, undefined))).toEqual({ allowInternetAccess: null, network: {} });
  });

  it("refuses what it cannot honor, by name", () => {
    const rule = (value: string) => ({ rules: { "a.example.com": [{ transform: { headers: { k: value } } }] } });
    expect(() => map(rule(`\${e2b.identity.tokens.aws}`))).toThrow(/workload identity tokens \(iam\) are not supported/);
    expect(() => map(rule(`\${e2b.other}`))).toThrow(/no placeholder: use \$\{e2b.secrets.NAME\}/);
    expect(() => map(rule(`\${e2b.secrets.missing}`))).toThrow(/names secret "missing", which this API key does not have/);
    expect(() => map({ rules: { "10.0.0.1": [] } })).toThrow(/is an address/);
    expect(() => map({ rules: { "a.example.com": [{ transform: { body: "x" } }] } })).toThrow(/unknown network rule transform "body"/);
    expect(() => map({ maskRequestHost: "x" })).toThrow(/maskRequestHost is not supported/);
    expect(() => map({ allowPublicTraffic: false })).toThrow(/allowPublicTraffic false is not supported/);
    expect(() => map({ allowout: [] })).toThrow(/did you mean "allowOut"/);
    expect(() => map({ egressProxy: { address: "no-port" } })).toThrow(/give host:port/);
    expect(() => checkE2bNetwork({}, "no")).toThrow(/allow_internet_access must be true or false/);
  });
});
