// A seeded mutation fuzzer for the host's frame decoder, the first thing a guest's bytes meet:
// valid guest frames, their bytes flipped, cut, repeated and given random lengths, fed in random
// chunk sizes. The decoder must yield frames or throw AgentProtocolError, nothing else. A blind
// run, then a coverage-guided one: V8's own block coverage (node:inspector) says which inputs
// reached new code in the decoder, and those join the corpus that later inputs are mutated from
// (Jazzer.js, the npm coverage-guided fuzzer, ships a native part needing glibc 2.38, newer than
// Debian 12's). The same seed gives the same inputs, so a failure here replays.
import { Session } from "node:inspector/promises";
import { describe, expect, it } from "vitest";

import { FrameDecoder } from "../../src/agent-client/protocol.js";
import { AgentProtocolError } from "../../src/errors.js";
import { guestFrame } from "./helpers.js";

const SEEDS = [
  guestFrame(0, { case: "hello", value: { protocolVersion: 1, agentVersion: "0.1.0", boot: [{ name: "agent_start", tNs: 5n }], pid: 1, generation: 3n } }),
  guestFrame(1, { case: "started", value: { pid: 42 } }),
  guestFrame(1, { case: "output", value: { stream: 1, data: Buffer.from("some output\n") } }),
  guestFrame(1, { case: "exit", value: { code: 3, signal: 9, timedOut: true, durationNs: 12345n, oomKills: 1n, pidsLimitHits: 2n } }),
  guestFrame(2, { case: "error", value: { kind: 3, errnum: 2, message: "no such file" } }),
  guestFrame(4, { case: "credit", value: { bytes: 65536 } }),
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

function mutate(r: (n: number) => number, corpus: readonly Buffer[] = SEEDS): Buffer {
  const parts = Array.from({ length: 1 + r(4) }, () => Buffer.from(corpus[r(corpus.length)]!));
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

// Feeds `input` in random chunks; counts frames, or true when refused with AgentProtocolError.
function feed(input: Buffer, r: (n: number) => number): { frames: number; refused: boolean } {
  const decoder = new FrameDecoder();
  let frames = 0;
  try {
    for (let off = 0; off < input.length; ) {
      const n = 1 + r(64);
      for (const f of decoder.push(input.subarray(off, off + n))) {
        expect(typeof f.session).toBe("number");
        frames++;
      }
      off += n;
    }
  } catch (err) {
    if (!(err instanceof AgentProtocolError)) throw err;
    return { frames, refused: true };
  }
  return { frames, refused: false };
}

describe("the host's frame decoder under mutation", () => {
  it("yields frames or throws AgentProtocolError for 20000 mutated streams", () => {
    const r = rng(0x5eed);
    let frames = 0;
    let refused = 0;
    for (let i = 0; i < 20_000; i++) {
      const out = feed(mutate(r), r);
      frames += out.frames;
      if (out.refused) refused++;
    }
    // Both outcomes were exercised.
    expect(frames).toBeGreaterThan(1000);
    expect(refused).toBeGreaterThan(1000);
  });

  it("keeps inputs that reach new blocks of the decoder, and none ends any other way", async () => {
    const session = new Session();
    session.connect();
    await session.post("Profiler.enable");
    // Counts, reset by every take: the blocks this one input ran, in the decoder and the protobuf
    // reader under it, each with its count's power of two (as AFL buckets hit counts).
    const DECODER = /agent-client\/protocol|@bufbuild\/protobuf\/dist\/esm\/(from-binary|wire\/)/;
    await session.post("Profiler.startPreciseCoverage", { callCount: true, detailed: true });
    const ran = async () => {
      const { result } = await session.post("Profiler.takePreciseCoverage");
      const blocks: string[] = [];
      for (const script of result.filter((s) => DECODER.test(s.url))) {
        for (const fn of script.functions)
          for (const b of fn.ranges) if (b.count > 0) blocks.push(`${script.url}:${b.startOffset}-${b.endOffset}:${Math.floor(Math.log2(b.count))}`);
      }
      return blocks;
    };
    try {
      const r = rng(0xc0de);
      const seen = new Set<string>();
      const corpus = [...SEEDS];
      await ran();
      for (let i = 0; i < 3000; i++) {
        const input = mutate(r, corpus);
        feed(input, r);
        const fresh = (await ran()).filter((b) => !seen.has(b));
        if (fresh.length) {
          for (const b of fresh) seen.add(b);
          corpus.push(input);
        }
      }
      // Guidance found inputs the seeds alone do not reach (refusals of every kind).
      expect(corpus.length).toBeGreaterThan(SEEDS.length + 10);
      expect(seen.size).toBeGreaterThan(50);
    } finally {
      await session.post("Profiler.stopPreciseCoverage");
      session.disconnect();
    }
  }, 120_000);
});
