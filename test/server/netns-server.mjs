// Run by e2b-network.test.ts inside the namespace that stands for the host (test/sandbox/netns):
// msb server (the built library, dist/, as a user runs it) with its sandboxes' network in the
// test internet, reached from the test's own namespace through a unix socket (argv[2]), which a
// path crosses and TCP does not. Prints "ready" once both listen.
import { connect, createServer as createNetServer } from "node:net";

import { createServer } from "../../dist/index.js";

const [socketPath, apiKey] = process.argv.slice(2);
const server = await createServer({ port: 0, apiKeys: [apiKey], maxSandboxes: 4 });
const { port } = new URL(server.url);
const bridge = createNetServer((c) => {
  const up = connect(Number(port), "127.0.0.1");
  c.pipe(up).pipe(c);
  const end = () => (c.destroy(), up.destroy());
  c.on("error", end).on("close", end);
  up.on("error", end).on("close", end);
});
bridge.listen(socketPath, () => console.log("ready"));
// Killed by the test: its sandboxes go with it (each VMM has a parent-death signal), but stop them cleanly on SIGTERM.
process.on("SIGTERM", () => void server.close().finally(() => process.exit(0)));
