// Run by netns.test.ts inside the namespace that stands for the host: boots a sandbox with the
// network policy in argv[2] (JSON), runs each shell command of argv[3] (a JSON array) in it, and
// prints {outputs, refusals} as JSON. Uses the built library (dist/), as a user's program would.
import { CustomSandbox } from "../../../dist/index.js";

const [policy, commands] = [JSON.parse(process.argv[2]), JSON.parse(process.argv[3])];
const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, network: policy, snapshot: false });
try {
  const outputs = [];
  for (const cmd of commands) outputs.push((await (await sb.command.run("sh", ["-c", `${cmd} 2>&1 | tail -1`])).output()).trim());
  console.log(JSON.stringify({ outputs, refusals: sb.networkRefusals }));
} finally {
  await sb.stop();
}
