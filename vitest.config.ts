import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Files boot agents and VMs; on two cores running them one at a time is both faster and fairer.
    fileParallelism: false,
    // The default images (python:3.12-slim, node:22-slim) come from Docker Hub, which tests do not
    // reach: they use the images scripts/prepare-guest.sh builds from Debian packages.
    env: { MSB_PYTHON_IMAGE: "local:python", MSB_NODE_IMAGE: "local:node" },
  },
});
