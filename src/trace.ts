// Tracing for tools, as undici does it: diagnostics_channel channels that cost nothing while no
// one subscribes. Beside them, NODE_DEBUG=microsandbox (util.debuglog) traces for people.
//   import diagnostics_channel from "node:diagnostics_channel";
//   diagnostics_channel.subscribe("microsandbox:boot:end", (m) => console.log(m));
import diagnostics_channel from "node:diagnostics_channel";

/** Each event and what its message holds. */
export interface TraceEvents {
  /** A sandbox's VM is being booted (or restored from a snapshot) on `backend`. */
  "boot:start": { name: string; backend: string };
  /** It runs: on what and why, how a snapshot was used, and how long it took. */
  "boot:end": { name: string; info: { name: string; accel?: string; reason: string }; snapshot?: string; ms: number };
  /** It did not boot. */
  "boot:error": { name: string; error: unknown };
  /** A VM was restored from a saved one (a fork's copy, a paused sandbox) `from` a name or directory. */
  "restore:end": { name: string; from: string; ms: number };
  /** A command started in a sandbox. */
  "command:start": { sandbox: string; command: string; args: readonly string[] };
  /** It ended: its exit code (null when a signal ended it), or the error that ended it. */
  "command:end": { sandbox: string; command: string; exitCode: number | null; error?: unknown; ms: number };
}

const channels = new Map<string, diagnostics_channel.Channel>();

/** The channel of `event`: "microsandbox:" and the event's name. */
export function traceChannel(event: keyof TraceEvents): diagnostics_channel.Channel {
  let channel = channels.get(event);
  if (!channel) {
    channel = diagnostics_channel.channel(`microsandbox:${event}`);
    channels.set(event, channel);
  }
  return channel;
}

export function publish<E extends keyof TraceEvents>(event: E, message: TraceEvents[E]): void {
  const channel = traceChannel(event);
  if (channel.hasSubscribers) channel.publish(message);
}
