// The public API of the microsandbox package: the sandboxes and their pool, images, the boot
// benchmark, msb server, tracing channels, and the typed errors. Everything else (the agent
// client, the VMM backends, the decision between them) is internal and may change in any release.

export type { FileData, FileStat, FileType } from "./agent-client/client.js";
export type { ExecProcess, ExitStatus, OutputChunk, SignalName } from "./agent-client/process.js";
export type { FsEvent, FsWatch } from "./agent-client/watch.js";
export type { BenchMode, BenchOptions } from "./bench/run.js";
// Boot benchmarks, msb server, and the diagnostics_channel events.
export { runBench } from "./bench/run.js";
// Image builds: a base image plus steps (RUN, COPY, ENV, ...) run in a microVM, into the store.
export { buildImage } from "./build/builder.js";
export type { DockerfileInstruction, ParsedDockerfile } from "./build/dockerfile.js";
export { dockerfileSteps, parseDockerfile } from "./build/dockerfile.js";
export type { BuildLogEvent, BuildOptions, BuildSpec, BuildStep, BuiltImage } from "./build/spec.js";
export * from "./errors.js";
export type { Credentials, Platform, PullEvent, RegistryClientOptions } from "./images/registry.js";
export { PlatformNotFoundError, RegistryError } from "./images/registry.js";
export type { ResolveOptions } from "./images/sources.js";
export { pullEvents, pullImage } from "./images/sources.js";
export type { ImageConfig, ImageInfo, ResolvedImage } from "./images/store.js";
// Images: pulled from registries, imported from archives, kept in the cache.
export { ImageStore } from "./images/store.js";
// A sandbox's VMM and why it was chosen, in words.
export { describeBackend } from "./sandbox/base.js";
// What a sandbox does: commands, interpreter cells, files, metrics, logs, volumes.
export type { CommandOptions, RunOptions, SandboxCommands, SpawnCommandOptions } from "./sandbox/commands.js";
export type { ExecutionStatus } from "./sandbox/execution.js";
export { CommandExecution, Execution } from "./sandbox/execution.js";
export type { SandboxFiles } from "./sandbox/files.js";
export type { Interpreter } from "./sandbox/kinds.js";
export { CustomSandbox, NodeSandbox, PythonSandbox } from "./sandbox/kinds.js";
export type { LogEntry, LogOptions } from "./sandbox/logs.js";
export type { SandboxMetrics } from "./sandbox/metrics.js";
export type { SandboxOptions, StartOptions } from "./sandbox/options.js";
export type { OrphanSandbox } from "./sandbox/outlive.js";
export type { PoolOptions, PoolStats } from "./sandbox/pool.js";
// A warm pool of booted sandboxes.
export { SandboxPool } from "./sandbox/pool.js";
export type { SandboxInfo } from "./sandbox/registry.js";
export type { ForkOptions, PauseOptions, ResumeOptions } from "./sandbox/sandbox.js";
// Sandboxes.
export { Sandbox } from "./sandbox/sandbox.js";
export type { VolumeInfo, VolumeSpec } from "./sandbox/volumes.js";
export { listVolumes, removeVolume } from "./sandbox/volumes.js";
export type { RunningServer, ServerOptions } from "./server/server.js";
export { createServer } from "./server/server.js";
export type { TraceEvents } from "./trace.js";
export { traceChannel } from "./trace.js";
export type { BackendInfo, BootTimeline, Confinement } from "./vm/machine.js";
export type { NetworkPolicy, PortForward } from "./vm/netpolicy.js";
export type { SnapshotOutcome } from "./vm/snapshot.js";
