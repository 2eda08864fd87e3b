// getHost(port): PORT-ID.DOMAIN, reached through this server with that Host header. Each request
// is carried to the guest's 127.0.0.1:PORT by a relay process in the guest (nc, else python3)
// over the agent's channel, with "Connection: close", and the raw response comes back on the
// client's socket. No network device is needed in the sandbox.
import { once } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";

import { InvalidArgumentError } from "../../errors.js";
import { SERVER_DEFAULTS } from "../defaults.js";
import { PortUnreachableError } from "../errors.js";
import { readBody } from "../http.js";
import type { E2bSandboxes } from "./shared.js";

/** The sandbox id and guest port a Host header names (PORT-ID.DOMAIN), if it names one. */
export function portHost(host: string | undefined): { port: number; id: string } | undefined {
  const m = /^(\d{1,5})-([0-9a-f]{16})\./.exec(host ?? "");
  return m ? { port: Number(m[1]), id: m[2]! } : undefined;
}

/** Relays one request to `port` in sandbox `id`; its body is limited to `bodyLimit` bytes. */
export async function relayToPort(
  sandboxes: E2bSandboxes,
  req: IncomingMessage,
  res: ServerResponse,
  port: number,
  id: string,
  bodyLimit: number,
): Promise<void> {
  const found = sandboxes.running(id);
  if (!found) throw new PortUnreachableError(`sandbox ${id} is not running`);
  if (!(port >= 1 && port <= 65535)) throw new InvalidArgumentError(`port ${port} is invalid: give 1 to 65535`);
  const body = await readBody(req, bodyLimit);
  const headers = Object.entries(req.headers)
    .filter(([k]) => k !== "connection" && k !== "keep-alive" && k !== "content-length" && k !== "transfer-encoding")
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`);
  const head = [`${req.method} ${req.url} HTTP/1.1`, ...headers, `content-length: ${body.length}`, "connection: close", "", ""].join("\r\n");
  const relay = `if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 ${port}; else exec python3 -c 'import socket,sys,threading
s=socket.create_connection(("127.0.0.1",${port}))
def up():
    for d in iter(lambda: sys.stdin.buffer.read1(65536), b""): s.sendall(d)
threading.Thread(target=up,daemon=True).start()
for d in iter(lambda: s.recv(65536), b""): sys.stdout.buffer.write(d); sys.stdout.buffer.flush()'; fi`;
  const proc = found.m.sandbox.command.spawn("sh", ["-c", relay], { stdin: true, timeout: SERVER_DEFAULTS.e2b.relayTimeoutS });
  await proc.write(Buffer.concat([Buffer.from(head), body]));
  const sock = res.socket!;
  let sent = 0;
  for await (const chunk of proc) {
    if (chunk.stream !== "stdout") continue;
    sent += chunk.data.length;
    // Waiting for a slow client holds the relay back (the process's credit), not host memory.
    if (!sock.write(chunk.data)) await Promise.race([once(sock, "drain"), once(sock, "close")]);
    if (sock.destroyed) {
      proc.kill(); // the client left
      break;
    }
  }
  const exit = await proc.exit;
  if (!sent) {
    throw new PortUnreachableError(
      `nothing answered on port ${port} in sandbox ${id} (relay exit ${exit.exitCode}): is a server listening on 127.0.0.1:${port} there?`,
    );
  }
  sock.end();
}
