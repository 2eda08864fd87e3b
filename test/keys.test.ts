// Options are checked against what exists: an unknown key at any depth is an InvalidArgumentError
// naming it and the nearest valid key, before anything boots or listens. No VMs.
import { describe, expect, it } from "vitest";
import { RegistryClient } from "../src/images/registry.js";
import { CustomSandbox, createServer, InvalidArgumentError, PythonSandbox, runBench, SandboxPool } from "../src/index.js";
import { checkKeys, nearest } from "../src/keys.js";

describe("option keys", () => {
  it("a typo is refused with what was meant, not booted with a default", async () => {
    const typo = CustomSandbox.create({ image: "local:busybox", memroy: 1024 } as never);
    await expect(typo).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(typo).rejects.toThrow(/unknown sandbox option "memroy": did you mean "memory"\?/);
    await expect(PythonSandbox.create({ secretz: { A: "b" } } as never)).rejects.toThrow(/unknown sandbox option "secretz": did you mean "secrets"\?/);
    await expect(PythonSandbox.create({ credentials: {} } as never)).rejects.toThrow(
      /unknown sandbox option "credentials" \(the sandbox options are name, image, /,
    );
    await expect(PythonSandbox.create({ network: "public", secrets: { A: { value: "v", hosts: ["x.test"], header: ["a"] } } } as never)).rejects.toThrow(
      /unknown secret option "header": did you mean "headers"\?/,
    );
  });

  it("holds at every depth: start, commands, volumes, ports, network, registry, pool, server", async () => {
    const sb = new CustomSandbox({ image: "local:busybox" });
    await expect(sb.start({ memroy: 1 } as never)).rejects.toThrow(/unknown start option "memroy": did you mean "memory"/);
    expect(() => sb.command.spawn("true", [], { stdn: true } as never)).toThrow(/unknown spawn option "stdn": did you mean "stdin"/);
    await expect(sb.command.run("true", [], { cdw: "/" } as never)).rejects.toThrow(/unknown command option "cdw": did you mean "cwd"/);
    expect(() => new CustomSandbox({ image: "local:busybox", volumes: [{ name: "v", path: "/data", readonly: true }] } as never)).toThrow(
      /unknown volume option "readonly": did you mean "readOnly"/,
    );
    expect(() => new CustomSandbox({ image: "local:busybox", network: "public", ports: [{ host: 1, guest: 2, adress: "0.0.0.0" }] } as never)).toThrow(
      /unknown port option "adress": did you mean "address"/,
    );
    expect(() => new CustomSandbox({ image: "local:busybox", network: { allow: [], dney: [] } } as never)).toThrow(
      /unknown network option "dney": did you mean "deny"/,
    );
    expect(() => new CustomSandbox({ image: "local:busybox", registry: { insecur: ["localhost:5000"] } } as never)).toThrow(
      /unknown registry option "insecur": did you mean "insecure"/,
    );
    expect(() => new RegistryClient({ credentials: { "r.example": { username: "u", password: "p", tokn: "x" } } } as never)).toThrow(
      /unknown credentials field "tokn"/,
    );
    expect(() => new SandboxPool(CustomSandbox, { size: 1, image: "local:busybox", memoryBuget: 10 } as never)).toThrow(
      /unknown pool option "memoryBuget": did you mean "memoryBudget"/,
    );
    expect(() => new SandboxPool(CustomSandbox, { size: 1, name: "x" } as never)).toThrow(/unknown pool option "name"/);
    await expect(createServer({ prot: 1 } as never)).rejects.toThrow(/unknown server option "prot": did you mean "port"/);
    await expect(createServer({ e2b: { fileLimt: 1 } } as never)).rejects.toThrow(/unknown server e2b option "fileLimt": did you mean "fileLimit"/);
    expect(() => sb.logs({ tial: 3 } as never)).toThrow(/unknown logs option "tial": did you mean "tail"/);
    await expect(sb.fork({ nmae: "copy" } as never)).rejects.toThrow(/unknown fork option "nmae": did you mean "name"/);
    await expect(runBench({ mode: "sequential", runs: 1, kernel: "/vmlinux" } as never)).rejects.toThrow(
      /unknown bench option "kernel": did you mean "kernels"/,
    );
  });

  it("suggests only what is close: a third of the word, transpositions counted once", () => {
    expect(nearest("memroy", ["memory", "cpus"])).toBe("memory");
    expect(nearest("MEMORY", ["memory"])).toBe("memory");
    expect(nearest("xyz", ["memory", "cpus"])).toBeUndefined();
    expect(nearest("cpu", ["cpus", "memory"])).toBe("cpus");
    expect(() => checkKeys("thing", { zzzz: 1 }, ["alpha"])).toThrow(/^unknown thing "zzzz" \(the things are alpha\)$/);
    expect(() => checkKeys("thing", { alpha: 1 }, ["alpha"])).not.toThrow();
  });
});
