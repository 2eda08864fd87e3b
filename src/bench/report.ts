// The boot benchmark's result for one backend and mode, as a fixed-width text table for the
// terminal and as JSON with per-phase summaries for files and later comparison.
import { formatMs, type Summary, successRate, summarize } from "./stats.js";

/** One sandbox boot: ms from the start of create() per phase (kernelToInit and stop are durations). */
export interface RunTimeline {
  ok: boolean;
  error?: string;
  hostPrep?: number;
  vmmStart?: number;
  /** Guest kernel start → agent start, by the guest's clock. */
  kernelToInit?: number;
  agentReady?: number;
  firstOutput?: number;
  /** How long stop() took. */
  stop?: number;
}

export interface BenchResult {
  /** e.g. "qemu (tcg)", "krun". */
  backend: string;
  /** "sequential", "burst" or "staggered". */
  mode: string;
  /** The guest kernel booted, where one was named (msb bench --kernel). */
  kernel?: string;
  runs: RunTimeline[];
  /** The same kernel booting a trivial init: ms from VMM start to its marker, one per boot. */
  floor: number[];
  machine?: Record<string, unknown>;
  /** An outside command timed the same way for scale (e.g. `docker run --rm alpine true`). */
  comparison?: { command: string; values: number[] };
}

export type Phase = "hostPrep" | "vmmStart" | "kernelToInit" | "agentReady" | "firstOutput" | "stop";

/** Phases in timeline order, with the labels the table uses. */
export const PHASES: readonly { key: Phase; label: string }[] = [
  { key: "hostPrep", label: "host prep" },
  { key: "vmmStart", label: "VMM start" },
  { key: "kernelToInit", label: "kernel → init" },
  { key: "agentReady", label: "agent ready" },
  { key: "firstOutput", label: "first output" },
  { key: "stop", label: "stop" },
];

/** Phases measured, like the floor, up to a point the guest reached; they get a ratio to the floor. */
const FLOOR_RATIO: ReadonlySet<Phase> = new Set<Phase>(["agentReady", "firstOutput"]);

/** The longest comparison command shown in full in the table's first column. */
const MAX_LABEL = 32;

/**
 * A phase's values over the successful runs only: a failed run's partial timeline would mix
 * aborted boots into the distribution. Runs that did not record the phase are skipped.
 */
export function phaseValues(result: BenchResult, phase: Phase): number[] {
  const out: number[] = [];
  for (const run of result.runs) {
    const v = run[phase];
    if (run.ok && v !== undefined) out.push(v);
  }
  return out;
}

function ratio(value: number | null, floor: number | null): string {
  if (value === null || floor === null || floor <= 0) return "—";
  return `${(value / floor).toFixed(1)}×`;
}

function percent(rate: number | null): string {
  return rate === null ? "—" : `${(rate * 100).toFixed(1)} %`;
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/**
 * A header line (backend, mode, n, success rate, floor p50) and one row per phase with p50,
 * trimmed mean, p95, p99 in ms and, for agent ready and first output, p50 ÷ floor p50.
 * A comparison command, if any, gets a last row below a rule.
 */
export function formatTable(result: BenchResult): string {
  const floor = summarize(result.floor);
  const ok = result.runs.filter((r) => r.ok).length;
  const header =
    `${result.backend}${result.kernel ? ` · kernel ${result.kernel}` : ""} · ${result.mode} · n=${result.runs.length} · ` +
    `success ${percent(successRate(result.runs))} (${ok}/${result.runs.length}) · ` +
    `floor p50 ${formatMs(floor.p50)} ms (n=${floor.n})`;

  const row = (label: string, s: Summary, withRatio: boolean): string[] => [
    label,
    formatMs(s.p50),
    formatMs(s.trimmedMean),
    formatMs(s.p95),
    formatMs(s.p99),
    withRatio ? ratio(s.p50, floor.p50) : "—",
  ];
  const rows = PHASES.map(({ key, label }) => row(label, summarize(phaseValues(result, key)), FLOOR_RATIO.has(key)));
  const cmp = result.comparison;
  const extra = cmp ? [row(truncate(cmp.command, MAX_LABEL), summarize(cmp.values), false)] : [];

  const head = ["phase (ms)", "p50", "trim mean", "p95", "p99", "p50/floor"];
  const all = [head, ...rows, ...extra];
  const widths = head.map((_, c) => Math.max(...all.map((r) => r[c]!.length)));
  // First column left-aligned, figures right-aligned, two spaces between columns.
  const line = (r: string[]) =>
    r
      .map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
      .join("  ")
      .trimEnd();
  const rule = "-".repeat(widths.reduce((a, w) => a + w, 0) + 2 * (widths.length - 1));

  const out = [header, line(head), rule, ...rows.map(line)];
  if (extra.length) out.push(rule, ...extra.map(line));
  return `${out.join("\n")}\n`;
}

/** What `toJson` returns: the result as given, plus success rate and summaries. */
export interface BenchJson extends BenchResult {
  successRate: number | null;
  summary: Record<Phase, Summary> & { floor: Summary; comparison?: Summary };
}

/** The result with its success rate and a Summary per phase, the floor and the comparison; ready for JSON.stringify. */
export function toJson(result: BenchResult): BenchJson {
  const phases = Object.fromEntries(PHASES.map(({ key }) => [key, summarize(phaseValues(result, key))])) as Record<Phase, Summary>;
  const summary: BenchJson["summary"] = { ...phases, floor: summarize(result.floor) };
  if (result.comparison) summary.comparison = summarize(result.comparison.values);
  return { ...result, successRate: successRate(result.runs), summary };
}
