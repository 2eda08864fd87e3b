// Sandbox options: their types, defaults and checks, and what they ask of the VM. Everything is
// validated here, before any VM starts, with messages that name the value and say what to do.
import { randomBytes } from "node:crypto";
import os from "node:os";

import { DEFAULT_PATH } from "../agent-client/process.js";
import { InvalidArgumentError } from "../errors.js";
import { RegistryClient, type RegistryClientOptions } from "../images/registry.js";
import { checkKeys, keysOf } from "../keys.js";
import {
  checkEgressProxy,
  checkInjectHeaders,
  checkSecrets,
  type InjectHeadersOption,
  type MachineSpec,
  type Secret,
  type SecretsOption,
} from "../vm/machine.js";
import { checkNetwork, checkPorts, type NetworkPolicy, type PortForward } from "../vm/netpolicy.js";
import { checkVolumes, type VolumeSpec, volumeFile } from "./volumes.js";

export interface SandboxOptions {
  /** 1–63 characters of [A-Za-z0-9_-], starting alphanumeric. Default: a generated name. */
  name?: string;
  /**
   * The image: a registry reference ("python:3.12-slim", "ghcr.io/o/r@sha256:…"), an archive
   * ("oci:DIR[:TAG]", "oci-archive:FILE[:TAG]", "docker-archive:FILE"), or a locally built image
   * ("local:python", see scripts/build-image.sh). PythonSandbox and NodeSandbox have defaults.
   */
  image?: string;
  /** When to fetch the image from its registry: "missing" (default), "always", or "never". */
  pull?: "missing" | "always" | "never";
  /** Registry settings for pulling: credentials, registries allowed over plain HTTP, retries. */
  registry?: RegistryClientOptions;
  /** Guest RAM in MiB. Default 512. */
  memory?: number;
  /** CPU cores; fractions round up to whole vCPUs. Default 1. */
  cpus?: number;
  /** Seconds to wait for the sandbox to boot. Default 180. */
  timeout?: number;
  /**
   * What the sandbox may reach, enforced outside the guest: "none" (no network device; the
   * default unless `ports` are published, which makes it "public"), "public" (the internet, not
   * the host or private, link-local and metadata addresses), "all" (the host's services too), or
   * { allow, deny } of CIDRs, domains and "*." suffixes.
   */
  network?: NetworkPolicy;
  /**
   * Guest TCP ports published on the host: { host, guest, address? }, the host side bound on
   * 127.0.0.1 unless `address` says otherwise. Needs a network.
   */
  ports?: PortForward[];
  /** Most processes the sandbox's commands may run at once; past it forks fail. Default 1024. */
  maxProcesses?: number;
  /** Environment for commands and interpreters, on top of PATH/HOME/LANG defaults. */
  env?: Record<string, string>;
  /** Working directory for commands and interpreters. Default: the image's WorkingDir, else "/". */
  workdir?: string;
  /** Which VMM: "auto" (default: libkrun where it works, else QEMU), "krun", or "qemu". */
  backend?: "auto" | "krun" | "qemu";
  /** A guest kernel to boot on QEMU instead of ours: an uncompressed vmlinux (x86_64) or an Image (aarch64), its virtio drivers built in or in a modules/ dir beside it. */
  kernel?: string;
  /**
   * Start from a memory snapshot instead of booting (QEMU): the first sandbox of a kind boots and
   * saves one, later ones restore it in milliseconds. Default true; false always boots cold.
   */
  snapshot?: boolean;
  /** Free-form tags, listed by Sandbox.list(): at most 64, keys 1–63 characters, values up to 256. */
  labels?: Record<string, string>;
  /**
   * The VM runs on when this process ends (QEMU; default false: it dies with this process), its
   * processes held, until another process takes it over with Sandbox.adopt() (Sandbox.orphans()
   * lists them) or it is stopped. Not with volumes (their lease is this process's).
   */
  outlive?: boolean;
  /**
   * Seconds the sandbox may run at most, from the moment it is running (handed out, for a pooled
   * one); then it is stopped and pending and later calls fail with SandboxExpiredError.
   */
  maxDuration?: number;
  /**
   * Seconds without a command, file operation or interpreter cell under way (and without touch())
   * after which the sandbox is stopped, as for maxDuration.
   */
  idleTimeout?: number;
  /**
   * Named persistent volumes mounted at guest paths (nosuid, nodev): ext4 images in the cache that
   * outlive the sandbox. One writer at a time (VolumeBusyError otherwise). A sandbox with volumes
   * boots cold (a memory snapshot would hold a stale view of them) and cannot fork or pause; QEMU.
   */
  volumes?: VolumeSpec[];
  /**
   * "required" (the default): the VMM runs jailed (namespaces of its own, no new privileges, as
   * root a uid of its own) with its network held by a supervisor outside it, or create() fails
   * with ConfinementError naming what this host lacks. "best-effort": it runs with what the host
   * allows, and Sandbox.confinement says what that was.
   */
  confinement?: "required" | "best-effort";
  /**
   * Values the guest never sees: `{ NAME: { value, hosts, headers? } }`. Commands see `$NAME` as
   * a placeholder (a keyed hash: the same for a secret in every sandbox of this host); the host's
   * egress proxy puts the value in its place only in requests to `hosts` (domains, "*." suffixes; they must be reachable under `network`), only in `headers`
   * (every header when absent), over HTTP (port 80) and HTTPS (443, through a CA made for this
   * sandbox, which its trust store and SSL_CERT_FILE, REQUESTS_CA_BUNDLE and NODE_EXTRA_CA_CERTS
   * name). A placeholder bound anywhere else is refused with a 403. QEMU.
   */
  secrets?: SecretsOption;
  /**
   * Request headers the host's egress proxy sets on HTTP and HTTPS requests to a host, replacing
   * any of that name the guest sent: `{ "api.example.com": { authorization: "Bearer …" } }`. A
   * "*." host covers every name below it; a request takes its exact name's entry, else the
   * longest suffix's (not merged). The guest never sees the values. QEMU.
   */
  injectHeaders?: InjectHeadersOption;
  /** "http://[user:pass@]host:port" or "socks5://…": all TCP egress goes through this proxy, and nowhere when it is down. QEMU. */
  egressProxy?: string;
}

export interface StartOptions {
  memory?: number;
  cpus?: number;
  /** Seconds to wait for the sandbox to boot. */
  timeout?: number;
}

export interface ResolvedOptions {
  name: string;
  image: string;
  memory: number;
  cpus: number;
  timeout: number;
  network: NetworkPolicy;
  ports: PortForward[];
  maxProcesses: number;
  env: Record<string, string>;
  workdir: string | undefined;
  pull: "missing" | "always" | "never";
  registry: RegistryClientOptions | undefined;
  backend: "auto" | "krun" | "qemu";
  kernel: string | undefined;
  snapshot: boolean;
  labels: Record<string, string>;
  outlive: boolean;
  maxDuration: number | undefined;
  idleTimeout: number | undefined;
  volumes: Required<VolumeSpec>[];
  confinement: "required" | "best-effort";
  secrets: Secret[];
  injectHeaders: InjectHeadersOption;
  egressProxy: string | undefined;
}

/** Every sandbox option, for the check that refuses any other key. */
export const SANDBOX_OPTION_KEYS = keysOf<SandboxOptions>({
  name: true,
  image: true,
  pull: true,
  registry: true,
  memory: true,
  cpus: true,
  timeout: true,
  network: true,
  ports: true,
  maxProcesses: true,
  env: true,
  workdir: true,
  backend: true,
  kernel: true,
  snapshot: true,
  labels: true,
  outlive: true,
  maxDuration: true,
  idleTimeout: true,
  volumes: true,
  confinement: true,
  secrets: true,
  injectHeaders: true,
  egressProxy: true,
});
export const START_OPTION_KEYS = keysOf<StartOptions>({ memory: true, cpus: true, timeout: true });

const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
export const MIN_MEMORY_MIB = 64;

export function checkMemory(memory: unknown): number {
  const hostMiB = Math.floor(os.totalmem() / 2 ** 20);
  if (typeof memory !== "number" || !Number.isInteger(memory) || memory < MIN_MEMORY_MIB || memory > hostMiB) {
    throw new InvalidArgumentError(
      `memory ${String(memory)} is invalid: give whole MiB from ${MIN_MEMORY_MIB} to ${hostMiB} (this host's RAM), e.g. memory: 512`,
    );
  }
  return memory;
}

export function checkCpus(cpus: unknown): number {
  if (typeof cpus !== "number" || !Number.isFinite(cpus) || cpus <= 0 || cpus > 64) {
    throw new InvalidArgumentError(`cpus ${String(cpus)} is invalid: give a number of cores above 0 and at most 64, e.g. cpus: 1`);
  }
  return cpus;
}

export function checkSeconds(what: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new InvalidArgumentError(`${what} ${String(v)} is invalid: give a positive number of seconds`);
  }
  return v;
}

/** A sandbox name: 1-63 of [A-Za-z0-9_-], starting with a letter or digit. */
export function checkName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw new InvalidArgumentError(`sandbox name ${JSON.stringify(name)} is invalid: use 1-63 letters, digits, '_' or '-', starting with a letter or digit`);
  }
  return name;
}

// Checked as the client will take it, so a bad registry option fails before anything boots.
function checkRegistry(registry: RegistryClientOptions | undefined): RegistryClientOptions | undefined {
  if (registry !== undefined) new RegistryClient(registry);
  return registry;
}

export function resolveOptions(opts: SandboxOptions, defaultImage: string | undefined): ResolvedOptions {
  if (opts === null || typeof opts !== "object") throw new InvalidArgumentError("sandbox options must be an object");
  checkKeys("sandbox option", opts, SANDBOX_OPTION_KEYS);
  const name = checkName(opts.name ?? `sandbox-${randomBytes(4).toString("hex")}`);
  const image = opts.image ?? defaultImage;
  if (typeof image !== "string" || image === "") {
    throw new InvalidArgumentError('CustomSandbox needs an image: CustomSandbox.create({ image: "busybox" })');
  }
  // No network unless asked; publishing ports asks for one, and then "public" is the default.
  const network = checkNetwork(opts.network ?? (opts.ports?.length ? "public" : "none"));
  const ports = checkPorts(opts.ports, network);
  const secrets = opts.secrets === undefined ? [] : checkSecrets(opts.secrets);
  if (secrets.length && network === "none")
    throw new InvalidArgumentError('secrets need a network: give network "public", "all" or a policy that reaches their hosts');
  const injectHeaders = opts.injectHeaders === undefined ? {} : checkInjectHeaders(opts.injectHeaders);
  if (Object.keys(injectHeaders).length && network === "none")
    throw new InvalidArgumentError('injectHeaders need a network: give network "public", "all" or a policy that reaches their hosts');
  const egressProxy = opts.egressProxy;
  if (egressProxy !== undefined) {
    checkEgressProxy(egressProxy);
    if (network === "none") throw new InvalidArgumentError('egressProxy needs a network: give network "public", "all" or a policy');
  }
  const backend = opts.backend ?? "auto";
  if (backend !== "auto" && backend !== "krun" && backend !== "qemu") {
    throw new InvalidArgumentError(`backend ${JSON.stringify(backend)} is invalid: use "auto", "krun" or "qemu"`);
  }
  const workdir = opts.workdir;
  if (workdir !== undefined && (typeof workdir !== "string" || !workdir.startsWith("/"))) {
    throw new InvalidArgumentError(`workdir ${JSON.stringify(workdir)} must be an absolute guest path`);
  }
  const env = { ...(opts.env ?? {}) };
  for (const [k, v] of Object.entries(env)) {
    if (!k || k.includes("=") || k.includes("\0") || typeof v !== "string" || v.includes("\0")) {
      throw new InvalidArgumentError(`environment variable ${JSON.stringify(k)} is invalid: names without '=', string values`);
    }
    if (secrets.some((s) => s.name === k))
      throw new InvalidArgumentError(`env.${k} is also a secret: a secret's variable holds its placeholder; drop one of them`);
  }
  if (opts.outlive === true && opts.volumes?.length)
    throw new InvalidArgumentError("outlive cannot be given with volumes: a volume's lease ends with this process; drop one of them");
  const maxProcesses = opts.maxProcesses ?? 1024;
  if (!Number.isInteger(maxProcesses) || maxProcesses < 16 || maxProcesses > 1_000_000) {
    throw new InvalidArgumentError(`maxProcesses ${String(maxProcesses)} is invalid: give a whole number from 16 to 1000000`);
  }
  return {
    name,
    image,
    maxProcesses,
    memory: checkMemory(opts.memory ?? 512),
    cpus: checkCpus(opts.cpus ?? 1),
    timeout: checkSeconds("timeout", opts.timeout ?? 180),
    network,
    ports,
    env,
    workdir,
    pull: checkPull(opts.pull ?? "missing"),
    registry: checkRegistry(opts.registry),
    backend,
    kernel: opts.kernel,
    snapshot: checkBoolean("snapshot", opts.snapshot ?? true),
    labels: checkLabels(opts.labels ?? {}),
    outlive: checkBoolean("outlive", opts.outlive ?? false),
    maxDuration: opts.maxDuration === undefined ? undefined : checkSeconds("maxDuration", opts.maxDuration),
    idleTimeout: opts.idleTimeout === undefined ? undefined : checkSeconds("idleTimeout", opts.idleTimeout),
    volumes: checkVolumes(opts.volumes),
    confinement: checkConfinement(opts.confinement ?? "required"),
    secrets,
    injectHeaders,
    egressProxy,
  };
}

function checkConfinement(v: unknown): "required" | "best-effort" {
  if (v !== "required" && v !== "best-effort") throw new InvalidArgumentError(`confinement ${JSON.stringify(v)} is invalid: use "required" or "best-effort"`);
  return v;
}

function checkLabels(labels: unknown): Record<string, string> {
  if (labels === null || typeof labels !== "object" || Array.isArray(labels)) {
    throw new InvalidArgumentError(`labels must be an object of string values, got ${JSON.stringify(labels)}`);
  }
  const entries = Object.entries(labels);
  if (entries.length > 64) throw new InvalidArgumentError(`labels has ${entries.length} entries; at most 64`);
  for (const [k, v] of entries) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$/.test(k) || typeof v !== "string" || v.length > 256) {
      throw new InvalidArgumentError(
        `label ${JSON.stringify(k)}: ${JSON.stringify(v)} is invalid: keys of 1-63 letters, digits, '_', '.', '/' or '-', string values up to 256 characters`,
      );
    }
  }
  return { ...(labels as Record<string, string>) };
}

function checkBoolean(name: string, v: unknown): boolean {
  if (typeof v !== "boolean") throw new InvalidArgumentError(`${name} ${JSON.stringify(v)} is invalid: give true or false`);
  return v;
}

function checkPull(pull: unknown): "missing" | "always" | "never" {
  if (pull !== "missing" && pull !== "always" && pull !== "never") {
    throw new InvalidArgumentError(`pull ${JSON.stringify(pull)} is invalid: use "missing", "always" or "never"`);
  }
  return pull;
}

/** "KEY=VALUE" entries (an image config's Env) as a record. */
export function envRecord(entries: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of entries) {
    const eq = e.indexOf("=");
    if (eq > 0) out[e.slice(0, eq)] = e.slice(eq + 1);
  }
  return out;
}

/** The guest environment: defaults a shell expects, then the image's, the sandbox's, the call's. */
export function guestEnv(...layers: (Record<string, string> | undefined)[]): Record<string, string> {
  return Object.assign({ PATH: DEFAULT_PATH, HOME: "/root", LANG: "C.UTF-8", TERM: "dumb" }, ...layers);
}

/** What a sandbox of options `o` asks of its VM; its console is kept in `consoleKeep` when it ends. */
export function machineSpecOf(o: ResolvedOptions, consoleKeep: string | undefined): MachineSpec {
  return {
    name: o.name,
    memory: o.memory,
    cpus: Math.ceil(o.cpus),
    network: o.network,
    ports: o.ports,
    maxProcesses: o.maxProcesses,
    bootTimeout: o.timeout,
    volumes: o.volumes.map((v) => ({ file: volumeFile(v.name), path: v.path, readOnly: v.readOnly })),
    backend: o.backend,
    confinement: o.confinement,
    secrets: o.secrets,
    injectHeaders: o.injectHeaders,
    ...(o.egressProxy ? { egressProxy: checkEgressProxy(o.egressProxy) } : {}),
    ...(consoleKeep !== undefined ? { consoleKeep } : {}),
    ...(o.kernel ? { kernel: o.kernel } : {}),
    ...(o.outlive ? { outlive: true } : {}),
  };
}
