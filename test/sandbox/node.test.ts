// NodeSandbox end to end on a real VM.
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { NodeSandbox } from "../../src/index.js";

let sb: NodeSandbox;

beforeAll(async () => {
  sb = await NodeSandbox.create({ name: "node-tests" });
}, 180_000);

afterAll(async () => {
  await sb?.stop();
});

describe("NodeSandbox", () => {
  it("says hello from Node", async () => {
    const execution = await sb.run("console.log('Hello from Node!')");
    expect(await execution.output()).toBe("Hello from Node!");
    expect(execution.language).toBe("javascript");
  });

  it("prints console.log(2 + 2) and echoes 2 + 2", async () => {
    expect(await (await sb.run("console.log(2 + 2)")).output()).toBe("4");
    expect(await (await sb.run("2 + 2")).output()).toBe("4");
  });

  it("keeps state and awaits top-level promises", async () => {
    await sb.run("var total = 40; function add(n) { total += n; return total; }");
    expect(await (await sb.run("add(2)")).output()).toBe("42");
    expect(await (await sb.run("await new Promise((r) => setTimeout(() => r('later'), 10))")).output()).toBe("'later'");
  });

  it("survives a cell writing to fd 1 and a child sharing it; their output comes in order", async () => {
    const raw = await sb.run('const fs = require("fs"); console.log("a"); fs.writeSync(1, "x\\n"); console.log("b")');
    expect(raw.stdout).toBe("a\nx\nb\n");
    const child = await sb.run('console.log("before"); require("child_process").execSync("echo hi", { stdio: "inherit" }); console.log("after")');
    expect(child.stdout).toBe("before\nhi\nafter\n");
    expect(await (await sb.run("2 + 2")).output()).toBe("4");
  });

  it("reports thrown errors", async () => {
    const execution = await sb.run("null.x");
    expect(execution.hasError()).toBe(true);
    expect(await execution.error()).toContain("TypeError");
  });

  it("runs commands", async () => {
    const execution = await sb.command.run("node", ["-e", "console.log(process.version)"]);
    expect(await execution.output()).toMatch(/^v18\./);
  });
});
