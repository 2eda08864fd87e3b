// Empirical CDFs of benchmark samples as one self-contained SVG (no fonts, scripts or links):
// one step line per series, so medians and tails of several backends compare at a glance.
import { summarize } from "./stats.js";

export interface CdfSeries {
  name: string;
  values: number[];
}

export interface CdfOptions {
  title: string;
  /** The values' unit, shown on the x axis (e.g. "ms"). */
  unit: string;
  /** Pixels; default 720. */
  width?: number;
  /** Pixels; default 440. Grows when the legend needs room. */
  height?: number;
}

/** Okabe–Ito: distinguishable with the common colour-vision deficiencies (yellow last: faint on white). */
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"];
/** Beyond the palette, series repeat colours with a dash pattern. */
const DASHES = ["", "6 3", "2 3", "8 3 2 3"];

const MARGIN = { top: 44, right: 24, left: 64, axis: 42 };
const LEGEND_ROW = 20;
const MIN_PLOT_HEIGHT = 160;

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** Fixed-precision coordinates keep the file small and the output stable for tests. */
const px = (v: number) => Number(v.toFixed(2)).toString();

/**
 * Ticks for an axis from 0 covering `max`: a step of 1, 2 or 5 × 10^k giving 5 to 8 ticks. The
 * axis ends on the tick at or above `max` when that fits, else (rarely) just past the last tick
 * at or below it. Between these two choices some step always gives 5 to 8 ticks.
 */
export function niceTicks(max: number): { ticks: number[]; end: number } {
  const m = max > 0 && Number.isFinite(max) ? max : 1;
  const base = 10 ** Math.floor(Math.log10(m / 8));
  const steps = [1, 2, 5, 10, 20, 50, 100].map((f) => f * base);
  const build = (step: number, count: number) => Array.from({ length: count }, (_, i) => Number((i * step).toPrecision(12)));
  for (const step of steps) {
    const count = Math.ceil(m / step - 1e-9) + 1;
    if (count >= 5 && count <= 8) {
      const ticks = build(step, count);
      return { ticks, end: ticks[count - 1]! };
    }
  }
  for (const step of steps) {
    const count = Math.floor(m / step + 1e-9) + 1;
    if (count >= 5 && count <= 8) return { ticks: build(step, count), end: m };
  }
  // Unreachable by the argument above; a plain 0..max axis if it ever is reached.
  return { ticks: [0, m], end: m };
}

function tickLabel(v: number, ticks: number[]): string {
  const step = ticks.length > 1 ? ticks[1]! - ticks[0]! : 1;
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(decimals);
}

/**
 * An SVG document with the empirical CDF of each series: the fraction of values at or below x,
 * a step line from (min, 0 %) to (max, 100 %). The x axis runs from 0 in `opts.unit`; the legend
 * names each series with its nearest-rank p50 and n. Empty series appear in the legend as
 * "no data" and draw no line. Throws a RangeError on NaN or infinite values.
 */
export function cdfSvg(series: readonly CdfSeries[], opts: CdfOptions): string {
  const width = opts.width ?? 720;
  const legendHeight = Math.max(1, series.length) * LEGEND_ROW;
  const bottom = MARGIN.axis + 12 + legendHeight;
  const height = Math.max(opts.height ?? 440, MARGIN.top + MIN_PLOT_HEIGHT + bottom);
  const plot = { x: MARGIN.left, y: MARGIN.top, w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - bottom };

  const summaries = series.map((s) => summarize(s.values));
  const max = Math.max(0, ...summaries.map((s) => s.max ?? 0));
  const { ticks, end } = niceTicks(max);
  const xAt = (v: number) => plot.x + (Math.min(Math.max(v, 0), end) / end) * plot.w;
  const yAt = (fraction: number) => plot.y + plot.h - fraction * plot.h;

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="sans-serif" font-size="12" fill="#222">`,
    `<title>${escapeXml(opts.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="${px(width / 2)}" y="26" text-anchor="middle" font-size="16" font-weight="bold">${escapeXml(opts.title)}</text>`,
  );

  // Grid and axes.
  out.push(`<g stroke="#ddd" stroke-width="1">`);
  for (const pct of [0, 25, 50, 75, 100])
    out.push(`<line x1="${px(plot.x)}" x2="${px(plot.x + plot.w)}" y1="${px(yAt(pct / 100))}" y2="${px(yAt(pct / 100))}"/>`);
  for (const t of ticks) out.push(`<line x1="${px(xAt(t))}" x2="${px(xAt(t))}" y1="${px(plot.y)}" y2="${px(plot.y + plot.h)}"/>`);
  out.push(`</g>`);
  // Axes on the left and bottom only: a full frame would hide the lines where they reach 100 %.
  out.push(
    `<polyline points="${px(plot.x)},${px(plot.y)} ${px(plot.x)},${px(plot.y + plot.h)} ${px(plot.x + plot.w)},${px(plot.y + plot.h)}" fill="none" stroke="#888"/>`,
  );
  out.push(`<g text-anchor="end">`);
  for (const pct of [0, 25, 50, 75, 100]) out.push(`<text x="${px(plot.x - 6)}" y="${px(yAt(pct / 100) + 4)}">${pct} %</text>`);
  out.push(`</g>`, `<g text-anchor="middle">`);
  for (const t of ticks) out.push(`<text x="${px(xAt(t))}" y="${px(plot.y + plot.h + 16)}">${tickLabel(t, ticks)}</text>`);
  out.push(`</g>`);
  out.push(
    `<text x="${px(plot.x + plot.w / 2)}" y="${px(plot.y + plot.h + 34)}" text-anchor="middle">${escapeXml(opts.unit)}</text>`,
    `<text transform="translate(16 ${px(plot.y + plot.h / 2)}) rotate(-90)" text-anchor="middle">runs at or below x (%)</text>`,
  );
  if (summaries.every((s) => s.n === 0)) {
    out.push(`<text x="${px(plot.x + plot.w / 2)}" y="${px(plot.y + plot.h / 2)}" text-anchor="middle" fill="#888">no data</text>`);
  }

  // One step line per non-empty series: up by 1/n at each value, across to the next.
  series.forEach((s, i) => {
    if (s.values.length === 0) return;
    const sorted = [...s.values].sort((a, b) => a - b);
    const n = sorted.length;
    const d = [`M${px(xAt(sorted[0]!))} ${px(yAt(0))}`];
    sorted.forEach((v, k) => {
      if (k > 0) d.push(`H${px(xAt(v))}`);
      d.push(`V${px(yAt((k + 1) / n))}`);
    });
    out.push(`<path d="${d.join("")}" ${lineStyle(i)} fill="none" stroke-width="2" stroke-linejoin="round"/>`);
  });

  // Legend below the axis label: swatch, name, p50, n.
  const legendTop = plot.y + plot.h + MARGIN.axis + 12;
  series.forEach((s, i) => {
    const y = legendTop + i * LEGEND_ROW;
    const sum = summaries[i]!;
    const stats = sum.n === 0 ? "no data" : `p50 ${figure(sum.p50!)} ${opts.unit} · n=${sum.n}`;
    // No swatch for a series without a line: a colour with nothing to match would mislead.
    if (sum.n > 0) out.push(`<line x1="${px(plot.x)}" x2="${px(plot.x + 24)}" y1="${px(y)}" y2="${px(y)}" ${lineStyle(i)} stroke-width="3"/>`);
    out.push(
      `<text x="${px(plot.x + 32)}" y="${px(y + 4)}"><tspan font-weight="bold">${escapeXml(s.name)}</tspan><tspan dx="10">${escapeXml(stats)}</tspan></text>`,
    );
  });

  out.push(`</svg>`);
  return `${out.join("\n")}\n`;
}

/** Three significant figures without exponents, so a p50 in s reads as well as one in ms. */
function figure(v: number): string {
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a === 0) return "0";
  return v.toFixed(Math.min(6, 2 - Math.floor(Math.log10(a))));
}

function lineStyle(i: number): string {
  const colour = PALETTE[i % PALETTE.length]!;
  const dash = DASHES[Math.floor(i / PALETTE.length) % DASHES.length]!;
  return `stroke="${colour}"${dash ? ` stroke-dasharray="${dash}"` : ""}`;
}
