// Public entry point of the microsandbox package.
export * from "./errors.js";
export { AgentClient } from "./agent/client.js";
export type { AgentHello, ConnectOptions, FileData, FileStat, FileType, ReadFileOptions, WriteFileOptions } from "./agent/client.js";
export { ExecProcess, SIGNALS } from "./agent/process.js";
export type { ExecOptions, ExecResult, ExitStatus, OutputChunk, RlimitName, SignalName, SpawnOptions } from "./agent/process.js";
export { probe, libkrunName } from "./native.js";
export type { ProbeItem, ProbeReport } from "./native.js";
export { agentBinaryPath, AgentBinaryError } from "./agent/binary.js";
export { Sandbox, PythonSandbox, NodeSandbox, CustomSandbox, SandboxCommands } from "./sandbox/sandbox.js";
export type { CommandOptions, RunOptions } from "./sandbox/sandbox.js";
export type { SandboxOptions, StartOptions } from "./sandbox/options.js";
export { Execution, CommandExecution } from "./sandbox/execution.js";
export type { ExecutionStatus } from "./sandbox/execution.js";
export { SandboxFiles } from "./sandbox/files.js";
export { ImageStore, ImageError } from "./images/store.js";
export { QemuBackend, VmBootError } from "./vm/qemu.js";
export { GuestKernelError } from "./vm/guest.js";
export type { BootTimeline, NetworkMode } from "./vm/backend.js";
