// The E2B API, so the e2b and @e2b/code-interpreter SDKs work unmodified against msb server: the
// control plane (control.ts; volumes.ts and their content API, volume-content.ts; logs and
// metrics, observe.ts; network and secrets, network.ts and secrets.ts) and the data plane (E2B_SANDBOX_URL: every sandbox on this one port,
// chosen by the E2b-Sandbox-Id header and allowed by its X-Access-Token): envd's Connect RPC
// services (envd.ts), its /files (files.ts), /health, /envs and /metrics, and the code
// interpreter (port 49999, interpreter.ts). Requests for getHost's PORT-ID.DOMAIN go to the port
// relay (ports.ts). Templates are built from the SDK's Template builder (templates.ts).
import type { IncomingMessage, ServerResponse } from "node:http";

import type { Keys } from "../auth.js";
import type { ImageCatalog, ImageOption } from "../catalog.js";
import { type BUILTIN_TEMPLATES, SERVER_DEFAULTS } from "../defaults.js";
import { NotFoundError } from "../errors.js";
import { readJsonObject } from "../http.js";
import type { Managed, SandboxTable } from "../sandboxes.js";
import { adoptE2b } from "./adoption.js";
import { controlPlane } from "./control.js";
import { envdHandler } from "./envd.js";
import { serveFiles, servePresigned } from "./files.js";
import { codeInterpreter } from "./interpreter.js";
import { checkE2bNetwork, E2bNetworks } from "./network.js";
import { envdEnvs, envdMetrics, observeRoutes } from "./observe.js";
import { resumeSandbox } from "./pausing.js";
import { portProxy } from "./ports.js";
import { SecretStore, secretRoutes } from "./secrets.js";
import { type E2bSandbox, E2bSandboxes, ENVD_PORT, type HeaderSource, headersOf, INTERPRETER_PORT } from "./shared.js";
import { SnapshotStore } from "./snapshots.js";
import { TemplateBuilds } from "./template-builds.js";
import { TemplateStore } from "./template-store.js";
import { templateRoutes } from "./templates.js";
import { volumeContent } from "./volume-content.js";
import { E2bVolumes, volumeRoutes } from "./volumes.js";

export interface E2bOptions {
  /**
   * Template ids to images and the kind of sandbox each makes, added to {@link BUILTIN_TEMPLATES}:
   * `{ image: "local:python", kind: "PythonSandbox" }` (only a PythonSandbox serves the code
   * interpreter). A bare string is an image reference: under a built-in id it keeps that id's
   * kind, under any other it is a CustomSandbox. An id in no table is looked up among the server's
   * `images`, else taken as an image reference, a CustomSandbox.
   */
  templates?: Record<string, ImageOption>;
  /** Largest file upload in bytes (default {@link SERVER_DEFAULTS}.e2b.fileLimit). */
  fileLimit?: number;
}

export function e2bApi(table: SandboxTable, catalog: ImageCatalog, keys: Keys, opts: E2bOptions, bodyLimit: number) {
  const sandboxes = new E2bSandboxes(table, keys);
  const volumes = new E2bVolumes();
  const networks = new E2bNetworks(sandboxes, new SecretStore());
  const secrets = secretRoutes(networks.secrets, (req) => sandboxes.owner(req), bodyLimit, {
    updated: (owner, name) => networks.secretChanged(owner, name),
    inUse: (owner, name) => networks.secretUsers(owner, name),
  });
  const snapshots = new SnapshotStore();
  const fileLimit = opts.fileLimit ?? SERVER_DEFAULTS.e2b.fileLimit;
  const templates = new TemplateStore();
  const builds = new TemplateBuilds(templates, catalog, fileLimit, (memory) => table.reserve(memory));
  const envd = envdHandler(sandboxes);
  const interpreter = codeInterpreter(catalog, bodyLimit, ({ m }) => table.persist(m));
  const ports = portProxy(sandboxes, async (id) => {
    const sb = sandboxes.byId(id);
    if (sb) await autoResume(sb);
  });

  /** Serves a data-plane request (one with E2b-Sandbox-Id). */
  async function dataPlane(req: IncomingMessage, res: ServerResponse): Promise<void> {
    await wake(headersOf(req));
    const port = String(req.headers["e2b-sandbox-port"] ?? ENVD_PORT);
    const url = new URL(req.url ?? "/", "http://x");
    if (port === ENVD_PORT && /^\/(process\.Process|filesystem\.Filesystem)\//.test(url.pathname)) return envd(req, res);
    const sb = sandboxes.forRequest(headersOf(req));
    if (port === ENVD_PORT && url.pathname === "/health") return void res.writeHead(204).end();
    if (port === ENVD_PORT && url.pathname === "/files") return serveFiles(sb.m.sandbox, req, res, url, fileLimit);
    if (port === ENVD_PORT && url.pathname === "/envs" && req.method === "GET") return envdEnvs(sb, res);
    if (port === ENVD_PORT && url.pathname === "/metrics" && req.method === "GET") return envdMetrics(sb, res);
    if (port === INTERPRETER_PORT && url.pathname === "/execute" && req.method === "POST") return interpreter.execute(sb, req, res);
    if (port === INTERPRETER_PORT && url.pathname.startsWith("/contexts")) return interpreter.contexts(sb, req, res, url.pathname);
    throw new NotFoundError(`sandbox port ${port} serves no ${req.method} ${url.pathname}`);
  }

  // A request allowed into a paused sandbox whose lifecycle has autoResume resumes it first (else:
  // 409); not a files-only pause, which only connect resumes, as a reboot.
  async function wake(headers: HeaderSource): Promise<void> {
    let sb: E2bSandbox;
    try {
      sb = sandboxes.allowed(headers);
    } catch {
      return; // refused where the request is served, in its protocol's form
    }
    await autoResume(sb);
  }

  async function autoResume(sb: E2bSandbox): Promise<void> {
    if (sb.s.paused?.memory && sb.s.lifecycle.autoResume && (await resumeSandbox(table, sb, sb.s.lifecycle.timeoutS))) await networks.refresh(sb);
  }

  return {
    routes: (on: Parameters<ReturnType<typeof volumeContent>>[0]) => {
      controlPlane(sandboxes, catalog, bodyLimit, volumes, networks, snapshots, templates)(on);
      templateRoutes(sandboxes, builds, templates, snapshots, bodyLimit)(on);
      volumeRoutes(volumes, sandboxes, bodyLimit)(on);
      volumeContent(volumes, table, catalog, bodyLimit, fileLimit)(on);
      observeRoutes(sandboxes)(on);
      secrets(on);
      on("PUT", "/sandboxes/:sandboxID/network", async (req, res, p) => {
        const sb = sandboxes.owned(req, p.sandboxID ?? "");
        const body = await readJsonObject(req, bodyLimit);
        const { allow_internet_access, ...network } = body;
        await networks.update(sb, checkE2bNetwork(network, allow_internet_access, true));
        res.writeHead(204).end();
      });
    },
    dataPlane,
    presigned: (req: IncomingMessage, res: ServerResponse) => servePresigned(sandboxes, req, res, fileLimit),
    /** Gives a sandbox adopted from a previous server its E2B state back. */
    adopt: (m: Managed, extra: unknown) => adoptE2b(sandboxes, m, extra),
    ports,
    /** Stops the template builds under way. */
    close: () => builds.close(),
  };
}
