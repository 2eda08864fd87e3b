// Every default of msb server, defined once: the server applies them, and the CLI's help and the
// options' doc comments read them from here.
import os from "node:os";

import type { ImageEntry } from "./catalog.js";

export const SERVER_DEFAULTS = {
  /** The address listened on; any other than loopback needs an API key. */
  host: "127.0.0.1",
  port: 5555,
  /** Sandboxes running at once; a create or resume past it gets 429. */
  maxSandboxes: 16,
  /** Paused sandboxes kept (on disk, outside maxSandboxes and the memory budget); a pause past it gets 429. */
  maxPaused: 64,
  /** Largest request body, in bytes: 1 MiB. */
  bodyLimit: 1_048_576,
  /** Milliseconds a connection taken from the HTTP server (an Upgrade's) may stay open after this side ended it. */
  closeGraceMs: 5000,
  /** Seconds a client is told to wait (Retry-After) when the server is full. */
  retryAfterS: 5,
  /** A sandbox's memory in MiB when the client names none. */
  sandboxMemoryMiB: 512,
  /** The Microsandbox protocol: the namespace and image of a sandbox.start that names none. */
  rpc: { namespace: "default", image: "microsandbox/python" },
  e2b: {
    /** The template of a create that names none. */
    template: "base",
    /** Seconds a sandbox lives when create or connect gives no timeout. */
    timeoutS: 300,
    /** Largest file upload, in bytes: 100 MiB. */
    fileLimit: 104_857_600,
    /** Sandboxes in one page of a list. */
    listLimit: 100,
    /** Bytes a template build's uploaded files may unpack to: 1 GiB. */
    templateFilesLimit: 1_073_741_824,
    /** Files and directories a template build's uploads may hold. */
    templateFileCount: 100_000,
    /** Template builds running at once; a build started past it gets 429. */
    maxBuilds: 2,
    /** Seconds a create of a template with a ready command waits for it to succeed (within the SDK's 60 s request timeout). */
    readyTimeoutS: 40,
  },
} as const;

/** The memory all sandboxes may take together, in MiB, unless told: half the host's RAM. */
export const defaultMemoryBudgetMiB = (): number => Math.floor(os.totalmem() / 2 ** 21);
export const DEFAULT_MEMORY_BUDGET_TEXT = "half the host's RAM";

/** Microsandbox image names the server knows without being told, and what they stand for. */
export const BUILTIN_IMAGES: Readonly<Record<string, ImageEntry>> = {
  "microsandbox/python": { image: "local:python", kind: "PythonSandbox" },
  "microsandbox/node": { image: "local:node", kind: "NodeSandbox" },
};

/** E2B template ids the server knows without being told, and what they stand for. */
export const BUILTIN_TEMPLATES: Readonly<Record<string, ImageEntry>> = {
  base: { image: "local:python", kind: "PythonSandbox" },
  "code-interpreter-v1": { image: "local:python", kind: "PythonSandbox" },
};

/** Where msb ps and msb kill look for a server when given none. */
export const DEFAULT_SERVER_URL = `http://${SERVER_DEFAULTS.host}:${SERVER_DEFAULTS.port}`;
