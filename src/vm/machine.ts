// The one interface the layers above boot VMs through: a MachineSpec (what a sandbox asks of its
// VM) is planned into a backend by the decision of select.ts, booted or restored into a Machine,
// and a running Machine is copied, saved and stopped through it. Which VMM runs, and how it
// saves, restores and copies, stays below this file; callers see only BackendInfo and the
// capabilities the chosen backend declares.
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { debuglog } from "node:util";

import type { AgentClient } from "../agent-client/client.js";
import { InvalidArgumentError, KrunStartError, NetworkError, SnapshotUnsupportedError, VmBootError } from "../errors.js";
import { publish } from "../trace.js";
import type { Backend, BootTimeline, Capability, Confinement, KeptSession, Vm, VmConfig, VmRecord } from "./backend.js";
import type { SandboxCA } from "./egress/ca.js";
import { MachineEgress } from "./egress/egress.js";
import { hasInjections, type InjectHeadersOption } from "./egress/inject.js";
import type { Secret } from "./egress/secrets.js";
import type { EgressProxyUrl } from "./egress/upstream.js";
import type { GuestArch } from "./guest.js";
import { recordKvmFailure } from "./kvm-trial.js";
import { type NetworkPolicy, type PortForward, vmNetwork } from "./netpolicy.js";
import type { Accel } from "./qemu.js";
import { type BackendName, backendFor, chooseBackend, type Decision, forcedAccel, type Need } from "./select.js";
import { cloneIdentity, copyVm, restoreOrBoot, type SnapshotOutcome, snapshotInputs } from "./snapshot.js";

export type { BootTimeline, Capability, Confinement, KeptSession } from "./backend.js";
export { egressEnv } from "./egress/egress.js";
export { checkInjectHeaders, type InjectHeadersOption } from "./egress/inject.js";
export { checkSecrets, type Secret, type SecretOption, type SecretsOption, secretsOption } from "./egress/secrets.js";
export { checkEgressProxy, type EgressProxyUrl } from "./egress/upstream.js";
export type { BackendName, Need } from "./select.js";

const debug = debuglog("microsandbox");

/** Which VMM runs a sandbox, how, and why it was chosen. */
export interface BackendInfo {
  /** "qemu" or "krun". */
  name: "qemu" | "krun";
  /** QEMU's acceleration; undefined for libkrun (KVM or Hypervisor.framework, always). */
  accel?: Accel;
  /** The guest's architecture. */
  arch: GuestArch;
  /** Why this one: the decision's facts, and a fallback's or a restore's story. */
  reason: string;
}

/** What a sandbox asks of its VM. */
export interface MachineSpec {
  name: string;
  /** MiB. */
  memory: number;
  /** Whole vCPUs. */
  cpus: number;
  network: NetworkPolicy;
  ports: readonly PortForward[];
  maxProcesses: number;
  /** Seconds to wait for the agent. */
  bootTimeout: number;
  /** Disk images the agent mounts at guest paths. */
  volumes: readonly { file: string; path: string; readOnly: boolean }[];
  /** Where the guest console's last 64 KiB go when the VM ends. */
  consoleKeep?: string;
  /** Guest kernel (QEMU); default ours. */
  kernel?: string;
  backend: BackendName;
  /** "required": a VMM the host cannot jail and police does not run; "best-effort": it runs with what the host allows. */
  confinement: Confinement["mode"];
  /** Values the guest sees only as placeholders, swapped in by the egress proxy for their hosts. */
  secrets: readonly Secret[];
  /** Request headers the egress proxy sets for their hosts; the guest never sees them. */
  injectHeaders?: InjectHeadersOption;
  /** The user's proxy that all egress goes through. */
  egressProxy?: EgressProxyUrl;
  /** The VM runs on when this process ends, for another to adopt (adoptMachine). */
  outlive?: boolean;
}

/** What adoptMachine() takes a machine back by (JSON; it holds the spec's secrets: keep it private). */
export interface MachineRecord {
  format: 1;
  vm: VmRecord;
  info: BackendInfo;
  /** The spec as it is now (updateNetwork changes it). */
  spec: MachineSpec;
  /** The egress proxy's port, which the VM's helper sends connections to. */
  proxyPort?: number;
}

/** The image a machine boots: its content id, unpacked tree, and read-only disk made on demand. */
export interface MachineImage {
  id: string;
  rootfs: string;
  disk(): Promise<string | undefined>;
}

/** A template's readying before its memory is saved as the snapshot later machines restore. */
export interface SnapshotRequest {
  /** Names what prewarm does, for the snapshot's key. */
  prewarmName: string;
  /** Readies the template; the processes it returns are kept running in every clone. */
  prewarm(agent: AgentClient): Promise<KeptSession[]>;
}

/** A running VM with its agent connected. */
export interface Machine {
  readonly agent: AgentClient;
  /** The VMM's process id. */
  readonly pid: number;
  readonly info: BackendInfo;
  /** What this machine's backend can do beyond booting. */
  readonly capabilities: ReadonlySet<Capability>;
  readonly timeline: BootTimeline;
  /** The guest console log while it runs. */
  readonly consoleLog: string;
  /** Resolves when the VMM process ended. */
  readonly exited: Promise<void>;
  /** Connections the network policy refused so far. */
  networkRefusals(): number;
  /** Requests the egress proxy refused because a secret's placeholder was bound where it may not go. */
  secretRefusals(): number;
  /** What confines the VMM on the host, as applied. */
  readonly confinement: Confinement;
  /**
   * Holds the machine's network to `policy` from now on (capability "egress-policy"): new
   * connections see it once this resolves, and open connections it refuses are closed (how many
   * is returned). A machine booted without a network device ("none") cannot gain one.
   */
  updateNetwork(change: { network: NetworkPolicy; secrets: readonly Secret[]; injectHeaders?: InjectHeadersOption }): Promise<{ closed: number }>;
  /** Graceful: the agent shuts the guest down, a bounded wait, then kill. Idempotent. */
  stop(): Promise<void>;
  /** Kills the VMM at once. */
  kill(): void;
  /**
   * A new machine with this one's memory, processes and files as they are now (capability
   * "fork"); this one runs on. Sessions in `keep` carry on in the copy for its host to adopt.
   */
  copy(changes: { name: string; ports: readonly PortForward[]; consoleKeep?: string }, keep: readonly number[]): Promise<Machine>;
  /**
   * Saves the machine into `dir` (capability "pause"), runs `commit` (the caller's own record of
   * it), and ends the machine; restoreMachine() brings it back. With `keepRunning` the machine
   * goes on once saved (a copy kept on disk). When the save or `commit` fails, the machine runs
   * on as it was.
   */
  save(dir: string, commit?: () => void | Promise<void>, opts?: { keepRunning?: boolean }): Promise<void>;
  /** An outliving machine (spec.outlive): what adoptMachine() takes it back by, as it is now. */
  record(): MachineRecord | undefined;
  /** An outliving machine, once its record() is kept where a next host finds it: from now on it outlives this process. */
  hold(): void;
  /** Lets go of an outliving machine: it runs on, its processes held for the next host. */
  detach(): void;
}

/** A backend chosen for a spec, before anything was booted. */
export interface MachinePlan {
  readonly info: BackendInfo;
  readonly capabilities: ReadonlySet<Capability>;
  /**
   * Boots a machine of `image`: with `snapshot`, where the backend has snapshots, restored from
   * the memory snapshot of its kind (made on first use). A boot that dies before its agent is
   * ready is booted again as the decision's fallback.
   */
  boot(image: MachineImage, snapshot?: SnapshotRequest): Promise<{ machine: Machine; snapshot?: SnapshotOutcome; kept: KeptSession[] }>;
  /**
   * Boots the benchmark's floor of `image`: the same kernel, flags and devices with a trivial
   * init; milliseconds to its marker. Absent where the backend has no floor (libkrun).
   */
  floor?(image: MachineImage): Promise<number>;
}

/** What a spec needs beyond booting, each with why: the decision passes over a backend that lacks one. */
export function machineNeeds(spec: Pick<MachineSpec, "network" | "ports" | "volumes" | "confinement"> & Partial<MachineSpec>): Need[] {
  const needs: Need[] = [];
  if (spec.secrets?.length) needs.push({ capability: "egress-policy", why: "secrets" });
  if (hasInjections(spec.injectHeaders)) needs.push({ capability: "egress-policy", why: "injected headers" });
  if (spec.egressProxy) needs.push({ capability: "egress-policy", why: "an egress proxy" });
  if (spec.confinement === "required") needs.push({ capability: "jail", why: 'a jailed VMM (confinement "required")' });
  if (spec.network !== "none" && spec.network !== "all") needs.push({ capability: "egress-policy", why: "a network policy" });
  if (spec.ports.length) needs.push({ capability: "ports", why: "published ports" });
  if (spec.volumes.length) needs.push({ capability: "volumes", why: "volumes" });
  if (spec.outlive) needs.push({ capability: "outlive", why: "a VM that outlives this process" });
  return needs;
}

/**
 * The one place a spec and an image become a VM's configuration; a network held by `egress`
 * takes its rules and proxy.
 */
function vmConfig(spec: MachineSpec, image: MachineImage, egress?: MachineEgress): VmConfig {
  return {
    name: spec.name,
    memory: spec.memory,
    cpus: spec.cpus,
    // The host's resolv.conf is read once: by the egress's rules, or by vmNetwork without one.
    ...(egress ? { network: "all" as const, egress: egress.rules(), proxyPort: egress.port } : vmNetwork(spec.network)),
    ports: [...spec.ports],
    maxProcesses: spec.maxProcesses,
    rootfs: image.rootfs,
    rootDisk: () => image.disk(),
    bootTimeout: spec.bootTimeout,
    confinement: spec.confinement,
    ...(spec.consoleKeep ? { consoleKeep: spec.consoleKeep } : {}),
    ...(spec.volumes.length ? { volumes: spec.volumes.map((v) => ({ ...v })) } : {}),
    ...(spec.outlive ? { outlive: true } : {}),
  };
}

const infoOf = (d: Decision, backend: Backend, reason = d.reason): BackendInfo => ({
  name: d.backend,
  ...(d.accel ? { accel: d.accel } : {}),
  arch: backend.arch,
  reason,
});

/**
 * Chooses the backend for `spec` as create() does: from the host's facts, the backend asked
 * for, and what the spec needs (a network policy, ports, volumes; `needs` adds more). Throws
 * what the chosen backend lacks to boot anything (the helper, the agent, the kernel) before a
 * caller spends time on an image.
 */
export async function planMachine(spec: MachineSpec, needs: readonly Need[] = []): Promise<MachinePlan> {
  const accel = forcedAccel();
  const decision = await chooseBackend({
    backend: spec.backend,
    network: vmNetwork(spec.network).network,
    needs: [...machineNeeds(spec), ...needs],
    ...(accel ? { accel } : {}),
    ...(spec.kernel ? { kernel: spec.kernel } : {}),
  });
  const backend = backendFor(decision, spec.kernel);
  await backend.check();
  debug("sandbox %s: %s (%s)", spec.name, decision.backend, decision.reason);
  return {
    info: infoOf(decision, backend),
    capabilities: backend.capabilities,
    boot: (image, snapshot) => bootDecided(decision, spec, image, snapshot),
    ...(backend.floor ? { floor: (image: MachineImage) => backend.floor!(vmConfig(spec, image)) } : {}),
  };
}

/**
 * @internal MachinePlan.boot with the decision given, not the host's (the fallback's tests): boots
 * `d`, else its fallback when the first dies before its agent is ready.
 */
export async function bootDecided(d: Decision, spec: MachineSpec, image: MachineImage, snapshot?: SnapshotRequest) {
  const boot = async (decision: Decision) => {
    const backend = backendFor(decision, spec.kernel);
    const egress = await egressFor(spec, backend);
    const config = vmConfig(spec, image, egress);
    const booted = await withEgress(egress, async () => {
      if (!snapshot || !backend.capabilities.has("snapshot")) return { vm: await backend.boot(config), kept: [] };
      const inputs = await snapshotInputs(backend, config, image.id, snapshot.prewarmName);
      // With a fallback to go to, a backend that cannot boot the template does not get a second,
      // cold try: the fallback does.
      const { vm, outcome, kept } = await restoreOrBoot(backend, config, inputs, snapshot.prewarm, { coldAfterBootFailure: !decision.fallback });
      return { vm, snapshot: outcome, kept };
    });
    return { ...booted, backend, config, egress };
  };
  const started = performance.now();
  publish("boot:start", { name: spec.name, backend: d.backend });
  let booted: { vm: Vm; backend: Backend; config: VmConfig; egress: MachineEgress | undefined; snapshot?: SnapshotOutcome; kept: KeptSession[] };
  let info: BackendInfo;
  try {
    booted = await boot(d);
    info = infoOf(d, booted.backend);
  } catch (err) {
    if (!d.fallback || !(err instanceof VmBootError || err instanceof KrunStartError)) {
      publish("boot:error", { name: spec.name, error: err });
      throw err;
    }
    const why = err.message.split("\n")[0]!;
    debug("sandbox %s: %s; falling back: %s", spec.name, why, d.fallback.reason);
    try {
      booted = await boot(d.fallback);
    } catch (second) {
      publish("boot:error", { name: spec.name, error: second });
      if (second instanceof VmBootError) throw new VmBootError(`${second.message}\n(first, ${d.reason}: ${why})`, second.consoleLog, { cause: second });
      throw second;
    }
    // Only a boot that works without KVM blames KVM (a bad image fails both ways).
    if (d.backend === "qemu" && d.accel === "kvm") await recordKvmFailure(spec.kernel, why);
    info = infoOf(d.fallback, booted.backend, `${d.fallback.reason} (${why})`);
  }
  const machine = machineOf(booted.vm, booted.backend, booted.config, info, spec, booted.egress);
  publish("boot:end", { name: spec.name, info, snapshot: booted.snapshot?.kind, ms: performance.now() - started });
  return { machine, ...(booted.snapshot ? { snapshot: booted.snapshot } : {}), kept: booted.kept };
}

/** What a saved machine needs to be restored: the same backend, acceleration and architecture. */
interface SavedMachine {
  format: 1;
  name: BackendInfo["name"];
  accel?: Accel;
  arch: GuestArch;
}

const SAVED_FILE = "machine.json";

// The egress proxy for `spec` on `backend`: none without a network, or where the backend's network
// cannot be held (libkrun's TSI, chosen only when nothing needs it). `ca`: the one a copy's guest trusts.
async function egressFor(spec: MachineSpec, backend: Backend, ca?: SandboxCA, port?: number): Promise<MachineEgress | undefined> {
  if (spec.network === "none" || !backend.capabilities.has("egress-policy")) return undefined;
  return MachineEgress.start(
    {
      network: spec.network,
      secrets: spec.secrets,
      ...(spec.injectHeaders ? { inject: spec.injectHeaders } : {}),
      ...(spec.egressProxy ? { egressProxy: spec.egressProxy } : {}),
    },
    ca,
    port,
  );
}

// Runs `start` (a boot, restore or copy), then hands the VM's redirected connections to `egress`
// and has its guest trust the CA; the proxy ends with a VM that never came, or failed that.
async function withEgress<T extends { vm: Vm }>(egress: MachineEgress | undefined, start: () => Promise<T>): Promise<T> {
  let started: T | undefined;
  try {
    started = await start();
    egress?.attach(started.vm);
    await egress?.trust(started.vm.agent);
    return started;
  } catch (err) {
    started?.vm.kill();
    await egress?.close();
    throw err;
  }
}

function machineOf(vm: Vm, backend: Backend, config: VmConfig, info: BackendInfo, booted: MachineSpec, egress: MachineEgress | undefined): Machine {
  let spec = booted; // its network and secrets change with updateNetwork
  const saveable = (capability: Capability, what: string) => {
    if (!vm.save || !backend.capabilities.has(capability)) throw new SnapshotUnsupportedError(`${info.name} cannot ${what} a VM: use backend "qemu"`);
    return vm.save;
  };
  return {
    agent: vm.agent,
    pid: vm.pid,
    info,
    capabilities: backend.capabilities,
    timeline: vm.timeline,
    consoleLog: vm.consoleLog,
    exited: vm.exited,
    networkRefusals: () => vm.networkRefusals?.() ?? 0,
    secretRefusals: () => egress?.secretRefusals() ?? 0,
    confinement: vm.confinement,
    async updateNetwork(change) {
      if (!egress) {
        if (change.network === "none" && !change.secrets.length && !hasInjections(change.injectHeaders)) return { closed: 0 };
        throw new NetworkError(
          config.network === "none"
            ? `sandbox ${config.name} has no network device (it was created with network "none"): create it with a network to change its policy`
            : `${info.name} cannot hold a running sandbox's network to a policy: use backend "qemu"`,
        );
      }
      // "none" on a machine with a device: nothing is admitted, DNS included.
      const closed = await egress.update(vm, vm.agent, {
        network: change.network,
        secrets: change.secrets,
        ...(change.injectHeaders ? { inject: change.injectHeaders } : {}),
        ...(spec.egressProxy ? { egressProxy: spec.egressProxy } : {}),
      });
      spec = { ...spec, network: change.network, secrets: change.secrets, injectHeaders: change.injectHeaders ?? {} };
      return closed;
    },
    stop: () => vm.stop(),
    kill: () => vm.kill(),
    record: () =>
      vm.record && {
        format: 1,
        vm: vm.record,
        info,
        spec,
        ...(egress ? { proxyPort: egress.port } : {}),
      },
    hold: () => vm.hold?.(),
    detach() {
      if (!vm.detach) throw new SnapshotUnsupportedError(`sandbox ${config.name} was not started to outlive this process: it cannot be let go of`);
      vm.detach();
    },
    async copy(changes, keep) {
      saveable("fork", "copy");
      // A copy outlives this process as its original does (spec.outlive).
      const copySpec: MachineSpec = { ...spec, name: changes.name, ports: changes.ports };
      if (changes.consoleKeep) copySpec.consoleKeep = changes.consoleKeep;
      else delete copySpec.consoleKeep;
      // The copy's guest trusts this one's CA already.
      const copyEgress = await egressFor(copySpec, backend, egress?.authority);
      const copyConfig: VmConfig = {
        ...config,
        name: changes.name,
        ports: [...changes.ports],
        ...(copyEgress ? { egress: copyEgress.rules(), proxyPort: copyEgress.port } : {}),
      };
      if (changes.consoleKeep) copyConfig.consoleKeep = changes.consoleKeep;
      else delete copyConfig.consoleKeep;
      const started = performance.now();
      const { vm: copy } = await withEgress(copyEgress, async () => ({ vm: await copyVm(vm, backend, copyConfig, [...keep]) }));
      const copied = machineOf(copy, backend, copyConfig, { ...info, reason: `${info.reason}; copied from ${config.name}` }, copySpec, copyEgress);
      publish("restore:end", { name: changes.name, from: config.name, ms: performance.now() - started });
      return copied;
    },
    async save(dir, commit, opts = {}) {
      const save = saveable("pause", "save");
      const saved: SavedMachine = { format: 1, name: info.name, ...(info.accel ? { accel: info.accel } : {}), arch: info.arch };
      try {
        await save(path.join(dir, "state"));
        writeFileSync(path.join(dir, `${SAVED_FILE}.tmp`), `${JSON.stringify(saved)}\n`, { mode: 0o600 });
        renameSync(path.join(dir, `${SAVED_FILE}.tmp`), path.join(dir, SAVED_FILE));
        await commit?.();
      } catch (err) {
        await vm.proceed?.().catch(() => {});
        throw err;
      }
      if (opts.keepRunning) {
        await vm.proceed?.();
        return;
      }
      // Saved: the VM itself is no longer needed.
      vm.kill();
      await vm.exited;
      await vm.stop();
    },
  };
}

/**
 * Brings back the machine save() wrote into `dir`, through the same decision as a boot (a paused
 * machine needs capability "pause"): a saved VM loads only into the backend, acceleration and
 * architecture that saved it, so a host whose decision changed since refuses with
 * SnapshotUnsupportedError. A restored machine takes a fresh identity with the same name;
 * sessions in `keep` carry on.
 */
export async function restoreMachine(dir: string, spec: MachineSpec, image: MachineImage, keep: readonly number[]): Promise<Machine> {
  let saved: SavedMachine;
  try {
    saved = JSON.parse(readFileSync(path.join(dir, SAVED_FILE), "utf8")) as SavedMachine;
  } catch (err) {
    throw new SnapshotUnsupportedError(`the saved machine in ${dir} has no readable ${SAVED_FILE} (${(err as Error).message}): remove it`);
  }
  const accel = forcedAccel();
  const d = await chooseBackend({
    backend: spec.backend,
    network: vmNetwork(spec.network).network,
    needs: [...machineNeeds(spec), { capability: "pause", why: "a paused sandbox" }],
    ...(accel ? { accel } : {}),
    ...(spec.kernel ? { kernel: spec.kernel } : {}),
  });
  const backend = backendFor(d, spec.kernel);
  if (d.backend !== saved.name || d.accel !== saved.accel || backend.arch !== saved.arch) {
    const was = `${saved.name}${saved.accel ? ` (${saved.accel})` : ""} on ${saved.arch}`;
    throw new SnapshotUnsupportedError(
      `sandbox ${spec.name} was saved on ${was}, and a sandbox here now gets ${backend.describe()} (${d.reason}): a saved VM loads only into what saved it`,
    );
  }
  if (!backend.restore) throw new SnapshotUnsupportedError(`${d.backend} cannot restore a saved VM`);
  await backend.check();
  // A new CA: the guest's trust is installed again (the saved one's key never left its process).
  const egress = await egressFor(spec, backend);
  const config = vmConfig(spec, image, egress);
  const started = performance.now();
  // A saved state is used once: fresh randomness and clock, the same name.
  const { generation } = cloneIdentity(spec.name);
  const restore = backend.restore.bind(backend);
  const { vm } = await withEgress(egress, async () => ({
    vm: await restore(config, { state: path.join(dir, "state"), resume: { generation, hostname: spec.name, keep: [...keep] } }),
  }));
  publish("restore:end", { name: spec.name, from: dir, ms: performance.now() - started });
  return machineOf(vm, backend, config, infoOf(d, backend, `${d.reason}; restored from ${dir}`), spec, egress);
}

/**
 * Takes over the running machine `record` names (spec.outlive), left by a process that ended or
 * let go of it: the same backend, its egress proxy again on the port the VM's helper sends to
 * (its guest's CA made anew and installed, as for a resumed machine), and the sessions in `keep`
 * carrying on. Throws VmGoneError when the VM is gone; a machine that cannot be taken over is
 * killed, never left running unowned.
 */
export async function adoptMachine(record: MachineRecord, image: MachineImage, keep: readonly number[]): Promise<Machine> {
  if (record?.format !== 1 || !record.vm?.dir || !record.info?.name) throw new InvalidArgumentError("the machine record is damaged or from another version");
  const { spec, info } = record;
  const backend = backendFor({ backend: info.name, ...(info.accel ? { accel: info.accel } : {}), reason: info.reason }, spec.kernel);
  if (!backend.adopt) throw new SnapshotUnsupportedError(`${info.name} cannot adopt a running VM`);
  const egress = await egressFor(spec, backend, undefined, record.proxyPort);
  const config = vmConfig(spec, image, egress);
  const adopt = backend.adopt.bind(backend);
  try {
    const { vm } = await withEgress(egress, async () => ({ vm: await adopt(config, record.vm, keep) }));
    return machineOf(vm, backend, config, { ...info, reason: `${info.reason}; adopted` }, spec, egress);
  } catch (err) {
    await egress?.close();
    throw err;
  }
}
