import { defineConfig } from "vitest/config";

// The quick tier (npm run test:unit): no VMs, no root, no QEMU, no KVM; what it needs is the
// checkout's build (the agent run as a host process, the VM helper against the libkrun double).
// Every other file boots real VMs, or needs root or the test images.
const UNIT = [
  "test/keys.test.ts",
  "test/architecture.test.ts",
  "test/paths.test.ts",
  "test/lock.test.ts",
  "test/artifacts.test.ts",
  "test/bench/stats.test.ts",
  "test/agent-client/*.test.ts",
  "test/images/layers.test.ts",
  "test/build/layer.test.ts",
  "test/build/dockerfile.test.ts",
  "test/build/ignore.test.ts",
  "test/vm/initramfs.test.ts",
  "test/vm/netpolicy.test.ts",
  "test/vm/dns.test.ts",
  "test/vm/egress*.test.ts",
  "test/vm/select.test.ts",
  "test/vm/krun.test.ts",
  "test/native/vmm-krun.test.ts",
  "test/server/catalog.test.ts",
  "test/server/errors.test.ts",
  "test/server/e2b-network-map.test.ts",
  "test/server/paused-records.test.ts",
  "test/server/secrets.test.ts",
  "test/server/processes.test.ts",
  "test/sandbox/repl-drivers.test.ts",
];

const shared = {
  testTimeout: 60_000,
  hookTimeout: 60_000,
  // Files boot agents and VMs; on two cores running them one at a time is both faster and fairer.
  fileParallelism: false,
  // The default images (python:3.12-slim, node:22-slim) come from Docker Hub, which tests do not
  // reach: they use the images scripts/prepare-guest.sh builds from Debian packages.
  env: { MSB_PYTHON_IMAGE: "local:python", MSB_NODE_IMAGE: "local:node" },
};

export default defineConfig({
  test: {
    // One file at a time across both projects too.
    fileParallelism: false,
    projects: [{ test: { ...shared, name: "unit", include: UNIT } }, { test: { ...shared, name: "vm", include: ["test/**/*.test.ts"], exclude: UNIT } }],
  },
});
