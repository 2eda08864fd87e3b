// Run by egress.test.ts inside the namespace that stands for the host: creates a sandbox with the
// options in argv[2] (JSON), then takes the steps of argv[3] (a JSON array) in order and prints
// one JSON line of results. A step is { run: "shell command" } (its output), { hold: "command" }
// (started in the background; the step waits for its first line of output), { wait: true } (the
// held command's remaining output, once it ends), or { update: { network, secrets? } }
// (sandbox.updateNetwork), { fork: "command" } (run in a fork, which then stops) or { pause: true }
// (pause the sandbox and resume it). Uses the built library (dist/), as a user's program would.
import { CustomSandbox } from "../../../dist/index.js";

const [options, steps] = [JSON.parse(process.argv[2]), JSON.parse(process.argv[3])];
let sb = await CustomSandbox.create({ memory: 256, ...options });
try {
  const outputs = [];
  const carried = { refusals: 0, secretRefusals: 0 }; // counted by a sandbox before its pause
  let held;
  for (const step of steps) {
    if (step.run !== undefined) {
      outputs.push((await (await sb.command.run("sh", ["-c", `${step.run} 2>&1`])).output()).trim());
    } else if (step.hold !== undefined) {
      const proc = sb.command.spawn("sh", ["-c", `${step.hold} 2>&1`]);
      let text = "";
      let firstLine;
      const first = new Promise((resolve) => (firstLine = resolve));
      const done = (async () => {
        for await (const chunk of proc) {
          text += chunk.data.toString();
          if (text.includes("\n")) firstLine();
        }
        firstLine();
        return text;
      })();
      await first;
      outputs.push(text.trim());
      held = done;
    } else if (step.wait) {
      outputs.push((await held).trim());
    } else if (step.fork !== undefined) {
      const fork = await sb.fork();
      try {
        outputs.push((await (await fork.command.run("sh", ["-c", `${step.fork} 2>&1`])).output()).trim());
      } finally {
        await fork.stop();
      }
    } else if (step.pause) {
      const name = sb.name;
      carried.refusals += sb.networkRefusals;
      carried.secretRefusals += sb.secretRefusals;
      await sb.pause();
      sb = await CustomSandbox.resume(name);
      outputs.push("resumed");
    } else if (step.update) {
      const t0 = performance.now();
      await sb.updateNetwork(step.update.network, step.update.secrets ? { secrets: step.update.secrets } : {});
      outputs.push(`updated in ${Math.round(performance.now() - t0)} ms`);
    }
  }
  const refusals = carried.refusals + sb.networkRefusals;
  const secretRefusals = carried.secretRefusals + sb.secretRefusals;
  console.log(JSON.stringify({ outputs, refusals, secretRefusals, confinement: sb.confinement }));
} finally {
  await sb.stop();
}
