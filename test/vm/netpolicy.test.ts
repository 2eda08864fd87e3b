// A network policy's values, checked and written as the rules msb-vmm's network supervisor holds QEMU's sockets
// to. No VMs: the enforcement itself is test/sandbox/network.test.ts's and netns.test.ts's.
import { describe, expect, it } from "vitest";

import { InvalidArgumentError } from "../../src/errors.js";
import { checkNetwork, NON_PUBLIC, policyRules } from "../../src/vm/netpolicy.js";

describe("network policy values", () => {
  it("checks and normalizes what it is given, naming a bad value", () => {
    expect(checkNetwork("public")).toBe("public");
    expect(checkNetwork({ allow: ["203.0.113.7", "2001:db8::/32"], deny: ["198.51.100.0/24"] })).toEqual({
      allow: ["203.0.113.7/32", "2001:db8::/32"],
      deny: ["198.51.100.0/24"],
    });
    expect(() => checkNetwork("private")).toThrow(/network "private" is invalid: use "none", "public", "all"/);
    expect(() => checkNetwork({ allow: ["10.0.0.0/33"] })).toThrow(InvalidArgumentError);
    expect(checkNetwork({ allow: ["Example.COM.", "*.pypi.org"] })).toEqual({ allow: ["example.com", "*.pypi.org"] });
    expect(() => checkNetwork({ allow: ["exa mple.com"] })).toThrow(/"exa mple.com" is invalid: give a CIDR .* a domain such as "example.com"/);
    expect(() => checkNetwork({ allow: ["*example.com"] })).toThrow(InvalidArgumentError);
    expect(() => checkNetwork({ allow: ["-bad.example.com"] })).toThrow(InvalidArgumentError);
    expect(() => checkNetwork({ allow: ["10.0.0.300"] })).toThrow(InvalidArgumentError);
    expect(() => checkNetwork({ allow: "10.0.0.0/8" })).toThrow(/network.allow must be an array/);
    expect(() => checkNetwork({ alow: [] })).toThrow(/unknown network option "alow": did you mean "allow"\?/);
    expect(() => checkNetwork({ deny: Array.from({ length: 201 }, (_, i) => `198.51.${i >> 8}.${i & 255}`) })).toThrow(/201 entries; at most 200/);
  });

  it("writes rules where DNS comes first, denials before admissions, and nothing else passes", () => {
    // "all" admits every address, and is still held by the supervisor (no other families, no io_uring).
    expect(policyRules("all", ["10.0.0.53"])).toBe("+10.0.0.53/32@53 +0.0.0.0/0 +::/0");
    expect(policyRules("none", [])).toBeUndefined();
    const pub = policyRules("public", ["10.0.0.53", "fd00::53"])!.split(" ");
    expect(pub.slice(0, 2)).toEqual(["+10.0.0.53/32@53", "+fd00::53/128@53"]);
    expect(pub).toContain("-127.0.0.0/8");
    expect(pub).toContain("-169.254.0.0/16");
    expect(pub.slice(-2)).toEqual(["+0.0.0.0/0", "+::/0"]);
    expect(pub.length).toBe(2 + NON_PUBLIC.length + 2);
    expect(policyRules({ allow: ["203.0.113.0/24"], deny: ["203.0.113.9/32"] }, [])).toBe("-203.0.113.9/32 +203.0.113.0/24");
    // Domains come last, behind the non-public ranges: no name admits the host or its network.
    const named = policyRules({ allow: ["10.1.0.0/16", "pypi.org", "*.pythonhosted.org"], deny: ["evil.pypi.org"] }, ["10.0.0.53"])!.split(" ");
    expect(named.slice(0, 3)).toEqual(["+10.0.0.53/32@53", "-d:evil.pypi.org", "+10.1.0.0/16"]);
    expect(named.slice(3, -2)).toEqual(NON_PUBLIC.map((c) => `-${c}`));
    expect(named.slice(-2)).toEqual(["+d:pypi.org", "+s:pythonhosted.org"]);
  });

  it("admits except's entries before deny refuses, and never a non-public address by name", () => {
    const ex = policyRules({ deny: ["203.0.113.0/24", "pypi.org"], except: ["203.0.113.9/32", "10.1.0.0/16", "*.pypi.org"] }, ["10.0.0.53"])!.split(" ");
    expect(ex.slice(0, 3)).toEqual(["+10.0.0.53/32@53", "+203.0.113.9/32", "+10.1.0.0/16"]);
    expect(ex.slice(3, 3 + NON_PUBLIC.length)).toEqual(NON_PUBLIC.map((c) => `-${c}`));
    expect(ex.slice(3 + NON_PUBLIC.length)).toEqual(["+s:pypi.org", "-203.0.113.0/24", "-d:pypi.org", "+0.0.0.0/0", "+::/0"]);
    expect(() => checkNetwork({ allow: ["a.org"], except: ["b.org"] })).toThrow(/network.except goes with deny, not allow/);
  });
});
