// Options are checked against what exists: a key no option has is an InvalidArgumentError that
// names it and the nearest valid one, at whatever depth it sits, since a typo (`memroy`) must not
// boot a sandbox with a default instead.
import { InvalidArgumentError } from "./errors.js";

/** T's keys, listed once: the compiler refuses a list that misses one or names one T has not. */
export const keysOf = <T>(keys: { [K in keyof Required<T>]: true }): readonly string[] => Object.keys(keys);

/** Throws for the first own key of `value` that is not in `valid`. `what` names one key: "sandbox option". */
export function checkKeys(what: string, value: object, valid: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (valid.includes(key)) continue;
    const near = nearest(key, valid);
    throw new InvalidArgumentError(
      `unknown ${what} ${JSON.stringify(key)}${near ? `: did you mean ${JSON.stringify(near)}?` : ""} (the ${what}s are ${valid.join(", ")})`,
    );
  }
}

/**
 * The candidate closest to `word`, if close enough to be what was meant: by edit distance with
 * transpositions (memroy → memory is one), at most a third of the word's length, case ignored.
 */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(w.length / 3)) + 1;
  for (const c of candidates) {
    const d = distance(w, c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

// Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps.
function distance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      const row = rows[i]!;
      row[j] = Math.min(row[j - 1]! + 1, rows[i - 1]![j]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j]!, rows[i - 2]![j - 2]! + 1);
    }
  }
  return rows[a.length]![b.length]!;
}
