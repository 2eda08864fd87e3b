// Public entry point of the microsandbox package.
export * from "./errors.js";
export { AgentClient } from "./agent/client.js";
export type { AgentHello, ConnectOptions, FileData, FileStat, FileType, ReadFileOptions, WriteFileOptions } from "./agent/client.js";
export { ExecProcess, SIGNALS } from "./agent/process.js";
export type { ExecOptions, ExecResult, ExitStatus, OutputChunk, RlimitName, SignalName, SpawnOptions } from "./agent/process.js";
export { probe, libkrunName } from "./native.js";
export type { ProbeItem, ProbeReport } from "./native.js";
export { agentBinaryPath, AgentBinaryError } from "./agent/binary.js";
