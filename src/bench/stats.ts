// Summary statistics for benchmark samples: percentiles by nearest rank, a 10 % trimmed mean, and
// success rates. Every function is total: an empty sample gives nulls, never NaN.

/** What `summarize` reports about a sample. Every field but `n` is null when the sample is empty. */
export interface Summary {
  n: number;
  min: number | null;
  max: number | null;
  mean: number | null;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  /** Mean after dropping the lowest and highest 10 % (floor(n / 10) values each side). */
  trimmedMean: number | null;
}

/** Throws a RangeError naming the first value that is not a finite number. */
function checkFinite(values: readonly number[], what: string): void {
  const bad = values.findIndex((v) => typeof v !== "number" || !Number.isFinite(v));
  if (bad >= 0) {
    throw new RangeError(`${what}: value ${bad} is ${String(values[bad])}, expected a finite number of milliseconds`);
  }
}

/**
 * Percentile `p` (0 < p <= 100) of an ascending-sorted sample by the nearest-rank method: the
 * smallest value with at least p % of the sample at or below it, i.e. sorted[ceil(p / 100 * n) - 1].
 * It is always an observed value (no interpolation), so p99 of fewer than 100 runs is the maximum.
 * Returns null for an empty sample.
 */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile: p is ${p}, expected 0 < p <= 100`);
  if (sorted.length === 0) return null;
  // The epsilon keeps 0.95 * 20 = 19.000000000000004 at rank 19, as exact arithmetic would.
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length - 1e-9));
  return sorted[rank - 1]!;
}

function mean(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/**
 * n, min, max, mean, nearest-rank p50/p95/p99 and the 10 % trimmed mean of `values` (any order).
 * The trim drops floor(n / 10) values from each end: none below 10 values, at least one from 10 on.
 * An empty sample gives n = 0 and nulls. Throws a RangeError on NaN or infinite values.
 */
export function summarize(values: readonly number[]): Summary {
  checkFinite(values, "summarize");
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  const trim = Math.floor(n / 10);
  return {
    n,
    min: n ? sorted[0]! : null,
    max: n ? sorted[n - 1]! : null,
    mean: mean(sorted),
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    trimmedMean: mean(sorted.slice(trim, n - trim)),
  };
}

/** Fraction (0..1) of runs with ok = true; null when there are no runs. */
export function successRate(runs: readonly { ok: boolean }[]): number | null {
  if (runs.length === 0) return null;
  return runs.filter((r) => r.ok).length / runs.length;
}

/** A millisecond figure for tables and legends: one decimal, or "—" for a missing value. */
export function formatMs(v: number | null | undefined): string {
  return v === null || v === undefined ? "—" : v.toFixed(1);
}
