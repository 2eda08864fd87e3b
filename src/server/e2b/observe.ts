// What the E2B API tells about a sandbox from the library's own records: its log (sandbox.logs():
// commands' output and events, the guest console) as E2B's log lines and entries, its metrics
// (sandbox.metrics(), the guest's counters) for one sandbox or several, and envd's /envs and
// /metrics on the data plane.
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../../errors.js";
import type { LogEntry } from "../../sandbox/logs.js";
import type { SandboxMetrics } from "../../sandbox/metrics.js";
import { type Handler, type Params, sendJson } from "../http.js";
import type { Managed } from "../sandboxes.js";
import type { E2bSandbox, E2bSandboxes } from "./shared.js";

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];
// A command's stderr counts as an error line; the guest console (the kernel's boot) as debug.
const LEVEL_OF: Record<LogEntry["source"], Level> = { stdout: "info", event: "info", stderr: "error", console: "debug" };
const LOG_LIMIT = 1000;
const METRICS_IDS_LIMIT = 100;

/** One E2B log entry a line: the library logs output as it came, several lines or part of one. */
interface Line {
  at: Date;
  level: Level;
  message: string;
  fields: Record<string, string>;
}

function linesOf(m: Managed): Line[] {
  // The whole log: it is bounded on disk (about 1 MiB a sandbox).
  return m.sandbox.logs({ tail: Number.MAX_SAFE_INTEGER }).flatMap((e) =>
    e.text
      .replace(/\r?\n$/, "")
      .split(/\r?\n/)
      .map((message) => ({
        at: e.time,
        level: LEVEL_OF[e.source],
        message,
        fields: { source: e.source, ...(e.command !== undefined ? { command: e.command } : {}) },
      })),
  );
}

/** The request's query, refusing any parameter not in `known`. */
function queryOf(req: IncomingMessage, known: readonly string[]): URLSearchParams {
  const q = new URL(req.url ?? "/", "http://x").searchParams;
  for (const k of q.keys()) if (!known.includes(k)) throw new InvalidArgumentError(`unknown query parameter ${k}: this route takes ${known.join(", ")}`);
  return q;
}

function count(q: URLSearchParams, key: string, fallback: number): number {
  const v = q.get(key);
  if (v === null) return fallback;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`${key} ${JSON.stringify(v)} is invalid: give a whole number`);
  return n;
}

const entryOf = (l: Line) => ({ timestamp: l.at.toISOString(), level: l.level, message: l.message, fields: l.fields });

/** An E2B SandboxMetric of a library sample. */
export function metricOf(s: SandboxMetrics) {
  return {
    timestamp: s.at.toISOString(),
    timestampUnix: Math.floor(s.at.getTime() / 1000),
    cpuCount: s.cpu.cores,
    cpuUsedPct: s.cpu.percent,
    memUsed: s.memory.usedBytes,
    memTotal: s.memory.totalBytes,
    diskUsed: s.disk.usedBytes,
    diskTotal: s.disk.usedBytes + s.disk.freeBytes,
  };
}

export function observeRoutes(sandboxes: E2bSandboxes) {
  const target = (req: IncomingMessage, params: Params) => sandboxes.owned(req, params.sandboxID ?? "");

  // v1 (deprecated in E2B, still called): lines from `start` (ms) on, oldest first, at most `limit`.
  function logsV1(req: IncomingMessage, res: ServerResponse, params: Params): void {
    const q = queryOf(req, ["limit", "start"]);
    const start = count(q, "start", 0);
    const limit = count(q, "limit", LOG_LIMIT);
    const lines = linesOf(target(req, params).m)
      .filter((l) => l.at.getTime() >= start)
      .slice(0, limit);
    sendJson(res, 200, { logs: lines.map((l) => ({ timestamp: l.at.toISOString(), line: l.message })), logEntries: lines.map(entryOf) });
  }

  // v2: from `cursor` (ms) forward, oldest first, or back from it, newest first; at `level` or above, containing `search`.
  function logsV2(req: IncomingMessage, res: ServerResponse, params: Params): void {
    const q = queryOf(req, ["cursor", "direction", "level", "limit", "search"]);
    const direction = q.get("direction") ?? "forward";
    if (direction !== "forward" && direction !== "backward")
      throw new InvalidArgumentError(`direction ${JSON.stringify(direction)} is invalid: give forward or backward`);
    const level = (q.get("level") ?? "debug") as Level;
    if (!LEVELS.includes(level)) throw new InvalidArgumentError(`level ${JSON.stringify(level)} is invalid: give ${LEVELS.join(", ")}`);
    const limit = count(q, "limit", LOG_LIMIT);
    const search = q.get("search") ?? "";
    let lines = linesOf(target(req, params).m).filter((l) => LEVELS.indexOf(l.level) >= LEVELS.indexOf(level) && l.message.includes(search));
    if (direction === "forward") {
      const cursor = count(q, "cursor", 0);
      lines = lines.filter((l) => l.at.getTime() >= cursor);
    } else {
      const cursor = count(q, "cursor", Date.now());
      lines = lines.filter((l) => l.at.getTime() <= cursor).reverse();
    }
    sendJson(res, 200, { logs: lines.slice(0, limit).map(entryOf) });
  }

  // The caller's running sandboxes among sandbox_ids (comma-separated, or repeated); others are left out, as E2B does.
  async function metrics(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ids = [
      ...new Set(
        queryOf(req, ["sandbox_ids"])
          .getAll("sandbox_ids")
          .flatMap((v) => v.split(",")),
      ),
    ].filter(Boolean);
    if (!ids.length) throw new InvalidArgumentError("sandbox_ids is missing: give the ids of the sandboxes to measure, comma-separated");
    if (ids.length > METRICS_IDS_LIMIT) throw new InvalidArgumentError(`${ids.length} sandbox_ids; at most ${METRICS_IDS_LIMIT} a call`);
    const mine = new Map(sandboxes.list(req).map((sb) => [sb.m.id, sb]));
    const running = ids.flatMap((id) => {
      const sb = mine.get(id);
      return sb && !sb.s.paused ? [sb] : [];
    });
    const samples = await Promise.all(running.map(async ({ m }) => [m.id, metricOf(await m.sandbox.metrics())] as const));
    sendJson(res, 200, { sandboxes: Object.fromEntries(samples) });
  }

  return function routes(on: (method: "GET", path: string, handler: Handler) => void): void {
    on("GET", "/sandboxes/:sandboxID/logs", logsV1);
    on("GET", "/v2/sandboxes/:sandboxID/logs", logsV2);
    on("GET", "/sandboxes/metrics", metrics);
  };
}

/** envd's GET /envs: the environment a command of the sandbox gets (the image's, then create's envVars). */
export function envdEnvs({ m }: E2bSandbox, res: ServerResponse): void {
  sendJson(res, 200, m.sandbox.processOptions({}, undefined).env);
}

/** envd's GET /metrics: the guest's resource use now, in envd's names. */
export async function envdMetrics({ m }: E2bSandbox, res: ServerResponse): Promise<void> {
  const s = await m.sandbox.metrics();
  const MiB = 2 ** 20;
  sendJson(res, 200, {
    ts: Math.floor(s.at.getTime() / 1000),
    cpu_count: s.cpu.cores,
    cpu_used_pct: s.cpu.percent,
    mem_total: s.memory.totalBytes,
    mem_used: s.memory.usedBytes,
    mem_total_mib: Math.floor(s.memory.totalBytes / MiB),
    mem_used_mib: Math.floor(s.memory.usedBytes / MiB),
    disk_total: s.disk.usedBytes + s.disk.freeBytes,
    disk_used: s.disk.usedBytes,
  });
}
