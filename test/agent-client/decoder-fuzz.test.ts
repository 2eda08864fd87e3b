// A seeded mutation fuzzer for the host's frame decoder, the first thing a guest's bytes meet:
// valid guest frames, their bytes flipped, cut, repeated and given random lengths, fed in random
// chunk sizes. The decoder must yield frames or throw AgentProtocolError, nothing else. (Not
// coverage-guided: scripts/fuzz.sh does that for the agent's side. The same seed gives the same
// inputs, so a failure here replays.)
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";
import { describe, expect, it } from "vitest";

import { FrameDecoder, lengthPrefixed } from "../../src/agent-client/protocol.js";
import { AgentProtocolError } from "../../src/errors.js";

const GuestMessage = protobuf.loadSync(fileURLToPath(new URL("../../proto/agent.proto", import.meta.url))).lookupType("microsandbox.agent.GuestMessage");
const frame = (m: object) => lengthPrefixed(Buffer.from(GuestMessage.encode(GuestMessage.fromObject(m)).finish()));

const SEEDS = [
  frame({ hello: { protocolVersion: 1, agentVersion: "0.1.0", boot: [{ name: "agent_start", tNs: 5 }], pid: 1, generation: 3 } }),
  frame({ session: 1, started: { pid: 42 } }),
  frame({ session: 1, output: { stream: 1, data: Buffer.from("some output\n") } }),
  frame({ session: 1, exit: { code: 3, signal: 9, timedOut: true, durationNs: 12345, oomKills: 1, pidsLimitHits: 2 } }),
  frame({ session: 2, error: { kind: 3, errnum: 2, message: "no such file" } }),
  frame({ session: 4, credit: { bytes: 65536 } }),
];

// xorshift32: small, seeded, the same sequence everywhere.
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

function mutate(r: (n: number) => number): Buffer {
  const parts = Array.from({ length: 1 + r(4) }, () => Buffer.from(SEEDS[r(SEEDS.length)]!));
  let b = Buffer.concat(parts);
  for (let i = r(6); i > 0; i--) {
    switch (r(5)) {
      case 0: // flip a byte
        if (b.length) b[r(b.length)] = r(256);
        break;
      case 1: // cut
        b = b.subarray(0, r(b.length + 1));
        break;
      case 2: // a random length prefix somewhere
        if (b.length >= 4) b.writeUInt32BE(r(2) ? r(1 << 16) : r(0xffffffff), r(b.length - 3));
        break;
      case 3: // repeat a slice
        b = Buffer.concat([b, b.subarray(r(b.length + 1))]);
        break;
      default: // random bytes
        b = Buffer.concat([b, Buffer.from(Array.from({ length: r(64) }, () => r(256)))]);
    }
  }
  return b;
}

describe("the host's frame decoder under mutation", () => {
  it("yields frames or throws AgentProtocolError for 20000 mutated streams", () => {
    const r = rng(0x5eed);
    let frames = 0;
    let refused = 0;
    for (let i = 0; i < 20_000; i++) {
      const input = mutate(r);
      const decoder = new FrameDecoder();
      try {
        for (let off = 0; off < input.length; ) {
          const n = 1 + r(64);
          for (const f of decoder.push(input.subarray(off, off + n))) {
            expect(typeof f.body).toBe("string");
            frames++;
          }
          off += n;
        }
      } catch (err) {
        if (!(err instanceof AgentProtocolError)) throw err;
        refused++;
      }
    }
    // Both outcomes were exercised.
    expect(frames).toBeGreaterThan(1000);
    expect(refused).toBeGreaterThan(1000);
  });
});
