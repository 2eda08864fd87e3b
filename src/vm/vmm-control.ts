// The host's end of `msb-vmm exec --control FD` (proto/vmm.proto's control channel): framed
// VmmEvents from the helper (what confines the VMM, what its network supervisor refused or
// redirected, answers to policy changes) and framed VmmCommands to it (a new network policy).
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";

import { lengthPrefixed } from "../agent-client/protocol.js";
import { MicrosandboxError } from "../errors.js";
import { type Confinement, type PolicyApplied, type Redirect, type Refusal, VmmCommandSchema, VmmEventSchema } from "../gen/vmm_pb.js";
import type { Confinement as SandboxConfinement } from "./backend.js";

// The helper's frames are at most 1 MiB (native/vmm/vmm.h's VMM_FRAME_MAX).
const FRAME_MAX = 1 << 20;

export class VmmControl extends EventEmitter<{ redirect: [Redirect]; refusal: [Refusal] }> {
  /** What the helper applied, written before the VMM runs; rejects if it ends without one. */
  readonly confinement: Promise<Confinement>;
  private refused = 0;
  private generation = 0;
  private pending = new Map<number, { resolve: (a: PolicyApplied) => void; reject: (e: Error) => void }>();
  private buffered: Buffer = Buffer.alloc(0);

  /**
   * `adopted`: a connection to the control socket of an outliving VM's helper, which reported the
   * confinement to the host that started it, not again.
   */
  constructor(
    private readonly socket: Socket,
    opts: { adopted?: boolean } = {},
  ) {
    super();
    let confined: (c: Confinement) => void;
    let failed: (e: Error) => void;
    this.confinement = new Promise<Confinement>((resolve, reject) => {
      confined = resolve;
      failed = reject;
    });
    this.confinement.catch(() => {}); // a caller that never asks is not an unhandled rejection
    if (opts.adopted) failed!(new MicrosandboxError("an adopted VM's helper reported its confinement to the host that started it"));
    socket.on("data", (chunk: Buffer) => {
      this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
      while (this.buffered.length >= 4) {
        const len = this.buffered.readUInt32BE(0);
        if (len > FRAME_MAX) {
          socket.destroy(new MicrosandboxError(`msb-vmm sent a control frame of ${len} bytes (at most ${FRAME_MAX})`));
          return;
        }
        if (this.buffered.length < 4 + len) break;
        const ev = fromBinary(VmmEventSchema, this.buffered.subarray(4, 4 + len)).event;
        this.buffered = this.buffered.subarray(4 + len);
        if (ev.case === "confinement") confined(ev.value);
        else if (ev.case === "refusal") this.refused++, this.emit("refusal", ev.value);
        else if (ev.case === "redirect") this.emit("redirect", ev.value);
        else if (ev.case === "policyApplied") {
          this.pending.get(ev.value.generation)?.resolve(ev.value);
          this.pending.delete(ev.value.generation);
        }
      }
    });
    socket.on("error", () => {}); // ends like a close: the VM is gone
    socket.on("close", () => {
      failed(new MicrosandboxError("msb-vmm ended before it reported the VMM's confinement"));
      for (const [generation, p] of this.pending) p.reject(new MicrosandboxError(`the VM's helper ended before applying policy ${generation}`));
      this.pending.clear();
    });
  }

  /** Closes this end: the helper runs on (an outliving VM's takes the next host's connection). */
  close(): void {
    this.socket.destroy();
  }

  /** Connections and datagrams the network supervisor refused so far. */
  refusals(): number {
    return this.refused;
  }

  /** Replaces the VM's network policy (--net-policy's grammar); resolves with the helper's answer. */
  setPolicy(rules: string): Promise<PolicyApplied> {
    const generation = ++this.generation;
    return new Promise<PolicyApplied>((resolve, reject) => {
      if (this.socket.destroyed) return reject(new MicrosandboxError("the VM's helper is gone: no policy can be applied"));
      this.pending.set(generation, { resolve, reject });
      const cmd = create(VmmCommandSchema, { command: { case: "setPolicy", value: { generation, rules } } });
      this.socket.write(lengthPrefixed(toBinary(VmmCommandSchema, cmd)));
    });
  }
}

/** The helper's report in the library's terms: its network "" means nothing holds the network. */
export function confinementOf(c: Confinement, mode: SandboxConfinement["mode"]): SandboxConfinement {
  const network = c.network === "none" || c.network === "supervisor" ? c.network : "unenforced";
  return { mode, namespaces: c.namespaces, uid: c.uid, noNewPrivs: c.noNewPrivs, seccomp: c.seccomp, network, missing: [...c.missing] };
}

/**
 * What gives a host the parts of confinement `missing` names ("what: why" entries of the helper's
 * report): `msb doctor`'s solutions, and the advice of a ConfinementError.
 */
export function confinementAdvice(missing: readonly string[]): string[] {
  const lacks = (what: string) => missing.some((m) => m.startsWith(`${what}:`));
  const advice: string[] = [];
  if (lacks("namespaces") || lacks("network namespace")) {
    advice.push(
      "run as root, or allow unprivileged user namespaces: sudo sysctl kernel.unprivileged_userns_clone=1 (Debian, Ubuntu) or sudo sysctl user.max_user_namespaces=15000",
      "Ubuntu 23.10+ also restricts them by AppArmor: sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0",
      "in a container: give it CAP_SYS_ADMIN and a seccomp profile that allows unshare (Docker's default profile does, for a container run with --cap-add SYS_ADMIN)",
    );
  }
  if (lacks("seccomp")) advice.push("a Linux kernel >= 5.6 (pidfd_getfd), with seccomp user notification (CONFIG_SECCOMP_FILTER)");
  advice.push('or create sandboxes with confinement: "best-effort" to run with what this host allows (sandbox.confinement says what that is)');
  return advice;
}
