import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Files boot agents and VMs; on two cores running them one at a time is both faster and fairer.
    fileParallelism: false,
  },
});
