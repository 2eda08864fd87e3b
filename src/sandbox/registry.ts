// The sandboxes of this process that are starting or running, for Sandbox.list(): each enters
// when start() begins and leaves when it stops, so a sandbox nobody stopped is listed (and one
// that was dropped without starting is not held on to).

/** One entry of Sandbox.list(). */
export interface SandboxInfo {
  /** Stable for the sandbox object's life, unique in the process (and, being random, beyond). */
  id: string;
  name: string;
  /** The class: "PythonSandbox", "NodeSandbox", "CustomSandbox". */
  kind: string;
  image: string;
  labels: Record<string, string>;
  status: "starting" | "running";
  /** The VMM's process id while running. */
  pid?: number;
  /** When start() began. */
  startedAt: Date;
}

export interface Listed {
  info(): SandboxInfo;
}

export const registry = new Set<Listed>();
