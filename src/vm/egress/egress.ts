// A machine's egress, as its VM helper and the host's proxy hold it: the rules the supervisor
// judges the VMM's sockets by (the policy, the hosts of secrets and injected headers to intercept,
// "!tunnel" for the user's proxy), the egress proxy it hands those connections to, and the CA the
// guest trusts when there are secrets or injected headers. Everything a machine does with its network beyond booting goes through here.
import type { AgentClient } from "../../agent-client/client.js";
import type { Redirect, Vm } from "../backend.js";
import { describeRefusal, type NetworkPolicy, vmNetwork } from "../netpolicy.js";
import { GUEST_BUNDLE_PATH, GUEST_CA_PATH, GUEST_SYSTEM_BUNDLES, GUEST_TRUST_ENV, SandboxCA } from "./ca.js";
import { hasInjections, type InjectHeadersOption, injectInterceptRules } from "./inject.js";
import { EgressProxy } from "./proxy.js";
import { interceptRules, type Secret, secretEnv } from "./secrets.js";
import type { EgressProxyUrl } from "./upstream.js";

/** What a machine's network is asked to be. */
export interface EgressSpec {
  network: NetworkPolicy;
  secrets: readonly Secret[];
  /** Headers the proxy sets on requests to their hosts (checkInjectHeaders). */
  inject?: InjectHeadersOption;
  egressProxy?: EgressProxyUrl;
}

/** Whether `spec` has the proxy read HTTPS requests: it then needs a CA the guest trusts. */
const intercepts = (spec: Pick<EgressSpec, "secrets" | "inject">) => spec.secrets.length > 0 || hasInjections(spec.inject);

// The CA's block in a guest bundle, so that installing again (a resumed sandbox's new CA) replaces it.
const BEGIN = "# microsandbox: this sandbox's CA (begin)\n";
const END = "# microsandbox: this sandbox's CA (end)\n";

/** The guest environment the secrets need (each one's placeholder), and the CA's trust variables when anything is intercepted. */
export function egressEnv(secrets: readonly Secret[], inject?: InjectHeadersOption): Record<string, string> {
  return intercepts({ secrets, inject }) ? { ...secretEnv(secrets), ...GUEST_TRUST_ENV } : {};
}

export class MachineEgress {
  private trusted = false;

  private constructor(
    private spec: EgressSpec,
    private readonly proxy: EgressProxy,
    private ca: SandboxCA | undefined,
  ) {}

  /**
   * The proxy for a machine about to boot with `spec`. `ca`: the CA its guest already trusts (a
   * copy of a running machine); else one is made when there are secrets or injected headers.
   * `port`: the one an adopted machine's helper already sends connections to.
   */
  static async start(spec: EgressSpec, ca?: SandboxCA, port = 0): Promise<MachineEgress> {
    const authority = ca ?? (intercepts(spec) ? await SandboxCA.create() : undefined);
    const proxy = await EgressProxy.start(
      {
        secrets: spec.secrets,
        ...(spec.inject ? { inject: spec.inject } : {}),
        describeRule: (token) => describeRefusal(spec.network, token),
        ...(authority ? { ca: authority } : {}),
        ...(spec.egressProxy ? { egressProxy: spec.egressProxy } : {}),
      },
      port,
    );
    const egress = new MachineEgress(spec, proxy, authority);
    egress.trusted = !!ca;
    return egress;
  }

  /** The proxy's port on 127.0.0.1, for the VM helper. */
  get port(): number {
    return this.proxy.port;
  }

  /** The CA the guest trusts, for a copy of this machine. */
  get authority(): SandboxCA | undefined {
    return this.ca;
  }

  /** The VM helper's rules for the spec: undefined for a machine without a network. */
  rules(spec: EgressSpec = this.spec): string | undefined {
    const base = vmNetwork(spec.network).egress;
    if (base === undefined) return undefined;
    // With a CA the proxy answers a refused HTTPS connection with a 403 too.
    const https = this.ca || intercepts(spec) ? ["!https"] : [];
    const intercepted = [...new Set([...interceptRules(spec.secrets), ...injectInterceptRules(spec.inject ?? {})])];
    return [base, ...intercepted, ...https, ...(spec.egressProxy ? ["!tunnel"] : [])].join(" ");
  }

  /** Hands the VM's redirected connections to the proxy, which ends with the VM. */
  attach(vm: Vm): void {
    vm.onRedirect?.((r: Redirect) => this.proxy.redirect(r));
    void vm.exited.then(() => this.proxy.close());
  }

  /**
   * Makes the guest trust the CA, when there is one: the CA alone, the system bundles with it
   * appended, and a bundle for the variables of GUEST_TRUST_ENV. Installing again replaces it.
   */
  async trust(agent: AgentClient): Promise<void> {
    if (!this.ca || this.trusted) return;
    const block = `${BEGIN}${this.ca.certificatePem.trimEnd()}\n${END}`;
    await agent.mkdir("/etc/msb", { parents: true, mode: 0o755 });
    await agent.writeFile(GUEST_CA_PATH, this.ca.certificatePem, { mode: 0o644 });
    let system = "";
    for (const bundle of GUEST_SYSTEM_BUNDLES) {
      let text: string;
      try {
        text = (await agent.readFile(bundle)).toString("utf8");
      } catch {
        continue; // not in this image
      }
      const start = text.indexOf(BEGIN);
      const end = text.indexOf(END, start);
      const without = start >= 0 && end > start ? text.slice(0, start) + text.slice(end + END.length) : text;
      system ||= without;
      // A bundle that links to another is the same file: the block is there once either way.
      await agent.writeFile(bundle, `${without}${without.endsWith("\n") || !without ? "" : "\n"}${block}`, { mode: 0o644 });
    }
    await agent.writeFile(GUEST_BUNDLE_PATH, `${system}${system.endsWith("\n") || !system ? "" : "\n"}${block}`, { mode: 0o644 });
    this.trusted = true;
  }

  /**
   * Holds the running `vm` to `spec` from now on: the proxy's secrets and injected headers first (a
   * connection the new rules intercept finds them), then the supervisor's rules, which shut the
   * open connections they refuse, those through the proxy included. A CA the guest trusts comes
   * first when the first secrets or injected headers arrive. When the supervisor refuses the rules, nothing changes.
   */
  async update(vm: Vm, agent: AgentClient, spec: EgressSpec): Promise<{ closed: number }> {
    if (intercepts(spec) && !this.ca) {
      this.ca = await SandboxCA.create();
      this.proxy.update({ ca: this.ca });
    }
    await this.trust(agent);
    const words = (network: NetworkPolicy) => (token: string) => describeRefusal(network, token);
    this.proxy.update({ secrets: spec.secrets, inject: spec.inject ?? {}, describeRule: words(spec.network) });
    try {
      const applied = await vm.setPolicy!(this.rules(spec) ?? "");
      this.spec = spec;
      return applied;
    } catch (err) {
      this.proxy.update({ secrets: this.spec.secrets, inject: this.spec.inject ?? {}, describeRule: words(this.spec.network) });
      throw err;
    }
  }

  /** Requests refused because a secret's placeholder was bound where it may not go. */
  secretRefusals(): number {
    return this.proxy.stats().secretRefusals;
  }

  async close(): Promise<void> {
    await this.proxy.close();
  }
}
