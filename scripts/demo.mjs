#!/usr/bin/env node
// Demo: boot a Python sandbox (a real microVM), run code in its persistent interpreter and a
// shell command, print what came back and how long each step took.
import { PythonSandbox } from "../dist/index.js";

const t0 = performance.now();
const ms = (t) => `${Math.round(performance.now() - t)} ms`;
// The image prepare-guest.sh builds from Debian packages; set MSB_PYTHON_IMAGE to use another
// (the default without the demo is python:3.12-slim from Docker Hub).
const image = process.env.MSB_PYTHON_IMAGE ?? "local:python";
const sandbox = await PythonSandbox.create({ name: "demo", image, memory: 512, cpus: 1 });
try {
  const how = { restored: "restored from a memory snapshot", created: "booted, and saved a memory snapshot for next time", cold: "booted" };
  const { name, accel, reason } = sandbox.backend;
  console.log(`${sandbox.name}: ${how[sandbox.timeline.snapshot?.kind ?? "cold"]} in ${ms(t0)}, on ${name}${accel ? ` (${accel})` : ""}: ${reason}`);
  let t = performance.now();
  const hello = await sandbox.run("import platform\nprint(f'Hello from Python {platform.python_version()} on {platform.release()}!')");
  console.log(`${await hello.output()}   (${ms(t)}, the first run)`);
  t = performance.now();
  const sum = await sandbox.run("2 + 2");
  console.log(`2 + 2 = ${await sum.output()}   (${ms(t)})`);
  const fail = await sandbox.run("1 / 0");
  console.log(`1 / 0 -> hasError() ${fail.hasError()}: ${(await fail.error()).split("\n").at(-1)}`);
  const cmd = await sandbox.command.run("uname", ["-a"]);
  console.log(`uname -a -> ${await cmd.output()} (exit ${cmd.exitCode})`);
} finally {
  await sandbox.stop();
}
console.log(`stopped; total ${ms(t0)}`);
