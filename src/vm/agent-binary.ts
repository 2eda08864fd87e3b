// Where the guest agent binary lives: build-guest/<guest arch>/msb-agent in the package, or the
// path in MSB_AGENT_PATH.
import { accessSync, constants } from "node:fs";
import { fileURLToPath } from "node:url";

import { AgentBinaryError } from "../errors.js";


export function guestArch(hostArch: string = process.arch): string {
  return { x64: "x86_64", arm64: "aarch64" }[hostArch] ?? hostArch;
}

export function agentBinaryPath(env: NodeJS.ProcessEnv = process.env): string {
  const path = env.MSB_AGENT_PATH ?? fileURLToPath(new URL(`../../build-guest/${guestArch()}/msb-agent`, import.meta.url));
  try {
    accessSync(path, constants.X_OK);
  } catch (err) {
    throw new AgentBinaryError(
      `the guest agent ${path} is missing or not executable.\n` +
        "Possible solutions:\n" +
        "- install its build tools: sudo apt-get install musl-tools libnanopb-dev nanopb protobuf-compiler\n" +
        "- then rebuild it: npm rebuild microsandbox (or node scripts/build-native.mjs in a checkout)\n" +
        "- or point MSB_AGENT_PATH at a built msb-agent",
      { cause: err },
    );
  }
  return path;
}
