// The msb commands that serve sandboxes (msb server) or talk to a running server (msb ps, msb
// kill).
import { InvalidArgumentError } from "../errors.js";
import { BUILTIN_IMAGES, BUILTIN_TEMPLATES, DEFAULT_MEMORY_BUDGET_TEXT, DEFAULT_SERVER_URL, SERVER_DEFAULTS } from "../server/defaults.js";
import { createServer } from "../server/server.js";
import { type Command, column, type OptionSpec, type Values } from "./spec.js";

export const SERVER_COMMANDS: Command[] = [
  {
    name: "server",
    synopsis: "server [--host ADDR] [--port N] [--api-key KEY] [options]",
    summary: "serve sandboxes over HTTP to the Microsandbox SDKs (JSON-RPC) and the E2B SDKs",
    description: `Serve sandboxes to clients that only talk to a server: the Microsandbox SDKs (POST /api/v1/rpc,
JSON-RPC 2.0; GET /api/v1/health) and the E2B SDKs (E2B_API_URL and E2B_SANDBOX_URL both this
server's URL). Listens on ${SERVER_DEFAULTS.host} unless --host says otherwise, and refuses any other address
without an API key (--api-key, or MSB_API_KEY), which clients send as Authorization: Bearer KEY
(E2B: X-API-KEY).

Sandboxes outlive the server: Ctrl-C, SIGTERM, a crash or SIGKILL of it leaves their VMs running
(their processes held), and the next msb server on this cache adopts them, with their tokens,
timeouts and metadata (one whose timeout passed meanwhile is stopped then); paused ones wait
for a connect there. Ones with volumes stop with the server. --stop-on-exit stops
every sandbox on Ctrl-C or SIGTERM, those adopted at the start included, and removes the paused
ones.

The Microsandbox SDKs' images and the E2B SDKs' templates this server knows by name, with the
kind of sandbox each makes (any other name is taken as an image reference, a CustomSandbox):
${column([
  ...Object.entries(BUILTIN_IMAGES).map(([name, e]): [string, string] => [name, `${e.image} (${e.kind})`]),
  ...Object.entries(BUILTIN_TEMPLATES).map(([id, e]): [string, string] => [`template ${id}`, `${e.image} (${e.kind})`]),
])}`,
    options: {
      host: { type: "string", value: "ADDR", default: SERVER_DEFAULTS.host, description: "address to listen on" },
      port: { type: "string", value: "N", number: "a number >= 0", default: String(SERVER_DEFAULTS.port), description: "port (0: any free one)" },
      "api-key": { type: "string", value: "KEY", default: "MSB_API_KEY", description: "the key clients must send" },
      "max-sandboxes": {
        type: "string",
        value: "N",
        number: "a whole number >= 1",
        default: String(SERVER_DEFAULTS.maxSandboxes),
        description: "sandboxes running at once; more get 429",
      },
      "max-paused": {
        type: "string",
        value: "N",
        number: "a whole number >= 1",
        default: String(SERVER_DEFAULTS.maxPaused),
        description: "paused sandboxes kept on disk; more pauses get 429",
      },
      "memory-budget": {
        type: "string",
        value: "MIB",
        number: "a whole number >= 1",
        default: DEFAULT_MEMORY_BUDGET_TEXT,
        description: "MiB all sandboxes may take; more get 429",
      },
      "access-log": { type: "boolean", description: "a JSON line per request on stderr", default: "off" },
      "stop-on-exit": { type: "boolean", description: "stop every sandbox when the server ends", default: "off" },
    },
    positionals: { min: 0, max: 0 },
    async handler({ values: v }) {
      const key = (v["api-key"] as string | undefined) ?? process.env.MSB_API_KEY;
      const server = await createServer({
        ...(v.host ? { host: v.host as string } : {}),
        ...(v.port !== undefined ? { port: v.port as number } : {}),
        ...(key ? { apiKeys: [key] } : {}),
        ...(v["max-sandboxes"] !== undefined ? { maxSandboxes: v["max-sandboxes"] as number } : {}),
        ...(v["max-paused"] !== undefined ? { maxPaused: v["max-paused"] as number } : {}),
        ...(v["memory-budget"] !== undefined ? { memoryBudgetMiB: v["memory-budget"] as number } : {}),
        accessLog: !!v["access-log"],
        outlive: !v["stop-on-exit"],
      });
      const { adopted, paused, stopped } = server.adoption;
      const count = (n: number) => `${n} sandbox${n === 1 ? "" : "es"}`;
      if (adopted.length) process.stderr.write(`msb server: adopted ${count(adopted.length)} running: ${adopted.join(", ")}\n`);
      if (paused.length) process.stderr.write(`msb server: adopted ${count(paused.length)} paused: ${paused.join(", ")}\n`);
      for (const s of stopped) process.stderr.write(`msb server: stopped sandbox ${s.id}: ${s.why}\n`);
      process.stderr.write(`msb server: listening on ${server.url}${key ? " (API key required)" : ""}\n`);
      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        process.once("SIGINT", () => resolve("SIGINT"));
        process.once("SIGTERM", () => resolve("SIGTERM"));
      });
      process.stderr.write(`msb server: ${signal}: ${v["stop-on-exit"] ? "stopping every sandbox" : "closing"}\n`);
      const kept = await server.close();
      if (kept) process.stderr.write(`msb server: ${count(kept)} left for the next msb server on this cache, running or paused\n`);
      return 0;
    },
  },
  {
    name: "ps",
    synopsis: "ps [--server URL] [--api-key KEY]",
    summary: "list the sandboxes an msb server runs, whichever protocol made them",
    description: `List the sandboxes a running msb server holds for this API key: Microsandbox-protocol ones
(namespace/name) and E2B ones (template) alike. The server is MSB_SERVER_URL, else
${DEFAULT_SERVER_URL}; the key --api-key, else MSB_API_KEY.`,
    options: serverOptions(),
    positionals: { min: 0, max: 0 },
    async handler({ values: v }) {
      const list = (await serverCall(v, "GET", "/api/v1/sandboxes")) as {
        id: string;
        protocol: string;
        namespace: string;
        name: string;
        template: string;
        memoryMiB: number;
        pid: number | null;
        startedAt: string;
      }[];
      const rows: [string, string][] = list.map((s) => [
        s.id,
        `${s.protocol === "e2b" ? `e2b ${s.template}` : `${s.namespace}/${s.name}`}  ${s.memoryMiB} MiB  pid ${s.pid ?? "-"}  since ${s.startedAt}`,
      ]);
      process.stdout.write(rows.length ? `${column([["ID", "WHAT  MEMORY  VMM  STARTED"], ...rows])}\n` : "no sandboxes\n");
      return 0;
    },
  },
  {
    name: "kill",
    synopsis: "kill ID... [--server URL] [--api-key KEY]",
    summary: "stop sandboxes an msb server runs",
    description: `Stop the sandboxes with these ids (msb ps lists them) on a running msb server; see msb ps.`,
    options: serverOptions(),
    positionals: { name: "ID", min: 1, max: Infinity },
    async handler({ values: v, positionals }) {
      for (const id of positionals) await serverCall(v, "DELETE", `/api/v1/sandboxes/${encodeURIComponent(id)}`);
      return 0;
    },
  },
];

function serverOptions(): Record<string, OptionSpec> {
  return {
    server: { type: "string", value: "URL", default: `MSB_SERVER_URL or ${DEFAULT_SERVER_URL}`, description: "the msb server" },
    "api-key": { type: "string", value: "KEY", default: "MSB_API_KEY", description: "the key the server wants" },
  };
}

// One request to a running msb server; its JSON answer, or an error naming the server's message.
async function serverCall(v: Values, method: string, path: string): Promise<unknown> {
  const base = (v.server as string | undefined) ?? process.env.MSB_SERVER_URL ?? DEFAULT_SERVER_URL;
  const key = (v["api-key"] as string | undefined) ?? process.env.MSB_API_KEY;
  let res: Response;
  try {
    res = await fetch(new URL(path, base), { method, headers: key ? { authorization: `Bearer ${key}` } : {} });
  } catch (err) {
    throw new InvalidArgumentError(`no msb server answers at ${base} (${(err as Error).message}): start one with msb server, or give --server`);
  }
  const text = await res.text();
  if (!res.ok)
    throw new InvalidArgumentError(`the server at ${base} answered ${res.status}: ${(JSON.parse(text || "{}") as { message?: string }).message ?? text}`);
  return text ? JSON.parse(text) : undefined;
}
