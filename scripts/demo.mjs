#!/usr/bin/env node
// Demo: start the guest agent as a host process (VM boot arrives with the QEMU backend), connect
// an AgentClient, and run Python and a shell command through it.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { AgentClient, agentBinaryPath } from "../dist/index.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "msb-demo-"));
const socket = path.join(dir, "agent.sock");
const agent = spawn(agentBinaryPath(), ["--listen", `unix:${socket}`], { stdio: "inherit" });
try {
  while (!existsSync(socket)) await new Promise((r) => setTimeout(r, 10));
  const client = await AgentClient.connect(socket);
  console.log(`agent ${client.hello.agentVersion} (protocol ${client.hello.protocolVersion}, pid ${client.hello.pid})`);

  const py = await client.exec(["python3", "-c", "print('Hello from Python!'); print(2 + 2)"], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    timeout: 10,
  });
  process.stdout.write(py.stdout);
  console.log(`python3 exited with ${py.exitCode} in ${py.durationMs.toFixed(1)} ms`);

  const echo = await client.exec(["echo", "Hello World"]);
  process.stdout.write(echo.stdout);

  await client.shutdown();
  await once(agent, "exit");
} finally {
  agent.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
}
