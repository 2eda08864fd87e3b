// Benchmark reporting without VMs: nearest-rank percentiles and trimmed means on known samples,
// the text table's exact layout, and the CDF SVG's well-formedness, paths and escaping.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";

import { type BenchResult, formatTable, toJson } from "../../src/bench/report.js";
import { percentile, successRate, summarize } from "../../src/bench/stats.js";
import { cdfSvg, niceTicks } from "../../src/bench/svg.js";

const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
/** A fixed permutation, so order never matters to the results. */
const shuffled = (xs: number[]) =>
  xs
    .map((x, i) => [((i * 7919) % 101) + i / 1000, x] as const)
    .sort((a, b) => a[0] - b[0])
    .map(([, x]) => x);

describe("summarize", () => {
  it("1..10: nearest-rank percentiles, one value trimmed each side", () => {
    expect(summarize(shuffled(range(1, 10)))).toEqual({
      n: 10,
      min: 1,
      max: 10,
      mean: 5.5,
      p50: 5,
      p95: 10,
      p99: 10,
      trimmedMean: 5.5,
    });
  });

  it("1..20 and 1..100: ranks ceil(p/100·n) with no floating-point creep", () => {
    expect(summarize(shuffled(range(1, 20)))).toMatchObject({ p50: 10, p95: 19, p99: 20, trimmedMean: 10.5 });
    expect(summarize(shuffled(range(1, 100)))).toMatchObject({ p50: 50, p95: 95, p99: 99, trimmedMean: 50.5 });
  });

  it("the trimmed mean drops an outlier the mean keeps", () => {
    const s = summarize([...range(1, 9), 1000]);
    expect(s.mean).toBe(104.5);
    expect(s.trimmedMean).toBe(5.5);
  });

  it("below 10 values nothing is trimmed; one value is every statistic", () => {
    expect(summarize([5, 1, 100]).trimmedMean).toBeCloseTo(106 / 3);
    expect(summarize([7])).toEqual({ n: 1, min: 7, max: 7, mean: 7, p50: 7, p95: 7, p99: 7, trimmedMean: 7 });
  });

  it("an empty sample gives nulls, not NaN", () => {
    expect(summarize([])).toEqual({ n: 0, min: null, max: null, mean: null, p50: null, p95: null, p99: null, trimmedMean: null });
  });

  it("refuses NaN and out-of-range percentiles with the culprit", () => {
    expect(() => summarize([1, Number.NaN])).toThrow(/value 1 is NaN/);
    expect(() => percentile([1], 0)).toThrow(/p is 0/);
  });

  it("successRate", () => {
    expect(successRate([{ ok: true }, { ok: false }, { ok: true }, { ok: true }])).toBe(0.75);
    expect(successRate([])).toBeNull();
  });
});

const result: BenchResult = {
  backend: "qemu (tcg)",
  mode: "sequential",
  runs: [
    { ok: true, hostPrep: 2, vmmStart: 3, kernelToInit: 300, agentReady: 400, firstOutput: 420, stop: 30 },
    { ok: true, hostPrep: 4, vmmStart: 5, kernelToInit: 320, agentReady: 440, firstOutput: 460, stop: 50 },
    { ok: true, hostPrep: 3, vmmStart: 4, kernelToInit: 310, agentReady: 420, firstOutput: 445.5, stop: 40 },
    { ok: false, error: "agent did not answer", hostPrep: 99, vmmStart: 99 },
  ],
  floor: [190, 200, 210],
  comparison: { command: "docker run --rm alpine true", values: [600, 650, 700] },
};

describe("formatTable", () => {
  it("lays out a fixed result exactly", () => {
    const rule = "-".repeat(70);
    expect(formatTable(result)).toBe(
      [
        "qemu (tcg) · sequential · n=4 · success 75.0 % (3/4) · floor p50 200.0 ms (n=3)",
        "phase (ms)                     p50  trim mean    p95    p99  p50/floor",
        rule,
        "host prep                      3.0        3.0    4.0    4.0          —",
        "VMM start                      4.0        4.0    5.0    5.0          —",
        "kernel → init                310.0      310.0  320.0  320.0          —",
        "agent ready                  420.0      420.0  440.0  440.0       2.1×",
        "first output                 445.5      441.8  460.0  460.0       2.2×",
        "stop                          40.0       40.0   50.0   50.0          —",
        rule,
        "docker run --rm alpine true  650.0      650.0  700.0  700.0          —",
        "",
      ].join("\n"),
    );
  });

  it("shows dashes, not NaN, when nothing succeeded", () => {
    const table = formatTable({ backend: "krun", mode: "burst", runs: [{ ok: false, error: "x" }], floor: [] });
    expect(table).not.toMatch(/NaN|null|undefined/);
    expect(table.split("\n")[0]).toBe("krun · burst · n=1 · success 0.0 % (0/1) · floor p50 — ms (n=0)");
  });

  it("toJson adds per-phase summaries over successful runs", () => {
    const json = toJson(result);
    expect(json.successRate).toBe(0.75);
    expect(json.summary.hostPrep).toMatchObject({ n: 3, max: 4 });
    expect(json.summary.floor.p50).toBe(200);
    expect(json.summary.comparison?.p50).toBe(650);
    expect(JSON.parse(JSON.stringify(json)).runs).toHaveLength(4);
  });
});

/**
 * A strict-enough XML check for generated SVG: balanced tags, quoted attributes, no stray `<` or
 * `&` in text or attribute values. Throws with the offset of the first problem.
 */
function checkXml(doc: string): void {
  const stack: string[] = [];
  const text = (s: string, at: number) => {
    const bad = s.search(/<|&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/);
    if (bad >= 0) throw new Error(`stray markup at ${at + bad}: ${s.slice(bad, bad + 20)}`);
  };
  let i = 0;
  let roots = 0;
  while (i < doc.length) {
    const lt = doc.indexOf("<", i);
    if (lt < 0) {
      text(doc.slice(i), i);
      break;
    }
    text(doc.slice(i, lt), i);
    const tag = /^<(\/?)([A-Za-z][\w:.-]*)((?:\s+[A-Za-z][\w:.-]*="[^"]*")*)\s*(\/?)>/.exec(doc.slice(lt));
    if (!tag) throw new Error(`malformed tag at ${lt}: ${doc.slice(lt, lt + 40)}`);
    const [whole, close, name, attrs, selfClose] = tag;
    for (const m of attrs!.matchAll(/="([^"]*)"/g)) text(m[1]!, lt);
    if (close) {
      if (stack.pop() !== name) throw new Error(`</${name}> at ${lt} closes nothing open`);
    } else {
      if (stack.length === 0) roots++;
      if (!selfClose) stack.push(name!);
    }
    i = lt + whole.length;
  }
  if (stack.length || roots !== 1) throw new Error(`unclosed ${stack.join(", ")} or ${roots} roots`);
}

// A real XML parser's verdict too (libxml2-utils, installed by scripts/setup-debian.sh).
function xmllint(doc: string): void {
  const dir = mkdtempSync(path.join(tmpdir(), "msb-svg-"));
  try {
    writeFileSync(path.join(dir, "cdf.svg"), doc);
    execFileSync("xmllint", ["--noout", path.join(dir, "cdf.svg")], { stdio: "pipe" });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("cdfSvg", () => {
  const series = [
    { name: "qemu (tcg)", values: [812, 845, 790, 905, 870, 1210, 830, 860, 845, 880] },
    { name: 'krun <fast> & "small"', values: [120, 131, 118, 140, 125, 210, 122, 128] },
    { name: "floor", values: [95] },
  ];

  it("is well-formed, one path per series, with escaped text", () => {
    const svg = cdfSvg(series, { title: "Boot → agent ready <p50> & tails", unit: "ms" });
    if (process.env.MSB_CDF_SAMPLE) writeFileSync(process.env.MSB_CDF_SAMPLE, svg);
    checkXml(svg);
    xmllint(svg);
    expect(svg.match(/<path /g)).toHaveLength(3);
    expect(svg).toContain("Boot → agent ready &lt;p50&gt; &amp; tails");
    expect(svg).toContain("krun &lt;fast&gt; &amp; &quot;small&quot;");
    expect(svg).toContain("p50 845 ms · n=10");
    expect(svg).not.toMatch(/NaN|undefined|<script|@import|href=/);
  });

  it("draws axes and a legend without lines for empty series", () => {
    const svg = cdfSvg([{ name: "none", values: [] }], { title: "empty", unit: "ms" });
    checkXml(svg);
    xmllint(svg);
    expect(svg).not.toContain("<path");
    expect(svg).toContain("no data");
    const none = cdfSvg([], { title: "nothing", unit: "s" });
    checkXml(none);
    expect(none).not.toMatch(/NaN/);
  });

  it("a single value is one step from 0 % to 100 %", () => {
    const svg = cdfSvg([{ name: "one", values: [42] }], { title: "one", unit: "ms", width: 400, height: 300 });
    checkXml(svg);
    expect(svg.match(/<path d="M[\d.]+ [\d.]+V[\d.]+"/)).not.toBeNull();
  });

  it("x ticks are 5-8 multiples of 1, 2 or 5 × 10^k from 0 covering the maximum", () => {
    for (const max of [0, 0.37, 1, 3, 7.1, 14.1, 16.5, 42, 99, 100, 1210, 4999, 123456]) {
      const { ticks, end } = niceTicks(max);
      expect(ticks.length, `max ${max}`).toBeGreaterThanOrEqual(5);
      expect(ticks.length, `max ${max}`).toBeLessThanOrEqual(8);
      expect(ticks[0]).toBe(0);
      expect(end).toBeGreaterThanOrEqual(max);
      const step = ticks[1]!;
      const mantissa = Number((step / 10 ** Math.floor(Math.log10(step))).toPrecision(6));
      expect([1, 2, 5], `step ${step}`).toContain(mantissa);
    }
  });
});
