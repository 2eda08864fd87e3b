// How the egress proxy reaches a destination: directly, or through the user's proxy (`egressProxy`,
// HTTP CONNECT or SOCKS5). With a proxy set, every path goes through it: a proxy that is down or
// refuses fails the connection, never a direct one.
import { request } from "node:http";
import { connect, isIPv6, type Socket } from "node:net";

import { SocksClient } from "socks";

import { InvalidArgumentError } from "../../errors.js";

/** A checked `egressProxy`. */
export interface EgressProxyUrl {
  protocol: "http" | "socks5";
  host: string;
  port: number;
  username?: string;
  password?: string;
}

const HINT = 'use "http://host:port" (HTTP CONNECT) or "socks5://host:port", with "user:password@" before the host if the proxy needs it';

/** Checks the `egressProxy` option; the message never repeats a password. */
export function checkEgressProxy(value: unknown): EgressProxyUrl {
  const shown = typeof value === "string" ? JSON.stringify(value.replace(/\/\/[^@/]*@/, "//…@")) : JSON.stringify(value);
  let url: URL;
  try {
    if (typeof value !== "string") throw new TypeError();
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`egressProxy ${shown} is not a URL: ${HINT}`);
  }
  const protocol = url.protocol === "http:" ? "http" : url.protocol === "socks5:" ? "socks5" : undefined;
  if (!protocol) throw new InvalidArgumentError(`egressProxy ${shown} has scheme ${JSON.stringify(url.protocol)}, which is not supported: ${HINT}`);
  if (!url.hostname || !url.port) throw new InvalidArgumentError(`egressProxy ${shown} needs a host and a port: ${HINT}`);
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) {
    throw new InvalidArgumentError(`egressProxy ${shown} has a path, query or fragment, which a proxy address does not: ${HINT}`);
  }
  const out: EgressProxyUrl = { protocol, host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(url.port) };
  if (url.username) out.username = decodeURIComponent(url.username);
  if (url.password) out.password = decodeURIComponent(url.password);
  return out;
}

const hostPort = (host: string, port: number) => (isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`);

/** A TCP connection to `address`:`port`, through `proxy` when set; rejects after `timeout` ms. */
export function dial(address: string, port: number, proxy: EgressProxyUrl | undefined, timeout: number): Promise<Socket> {
  if (!proxy) return direct(address, port, timeout);
  if (proxy.protocol === "socks5") return socks5(address, port, proxy, timeout);
  return httpConnect(address, port, proxy, timeout);
}

function direct(address: string, port: number, timeout: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port });
    const timer = setTimeout(() => socket.destroy(new Error(`connecting to ${hostPort(address, port)} took over ${timeout} ms`)), timeout);
    socket.once("connect", () => (clearTimeout(timer), socket.off("error", fail), resolve(socket)));
    const fail = (err: Error) => (clearTimeout(timer), reject(err));
    socket.once("error", fail);
  });
}

async function socks5(address: string, port: number, proxy: EgressProxyUrl, timeout: number): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: proxy.host, port: proxy.port, type: 5, ...(proxy.username !== undefined && { userId: proxy.username, password: proxy.password ?? "" }) },
    command: "connect",
    destination: { host: address, port },
    timeout,
  });
  return socket;
}

function httpConnect(address: string, port: number, proxy: EgressProxyUrl, timeout: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const target = hostPort(address, port);
    const headers: Record<string, string> = { host: target };
    if (proxy.username !== undefined) {
      headers["proxy-authorization"] = `Basic ${Buffer.from(`${proxy.username}:${proxy.password ?? ""}`).toString("base64")}`;
    }
    const req = request({ host: proxy.host, port: proxy.port, method: "CONNECT", path: target, headers, agent: false, timeout });
    req.once("timeout", () => req.destroy(new Error(`the egress proxy ${hostPort(proxy.host, proxy.port)} did not answer CONNECT within ${timeout} ms`)));
    req.once("error", reject);
    req.once("response", (res) => {
      // A non-2xx answer to CONNECT arrives as an ordinary response.
      res.resume();
      req.destroy();
      reject(new Error(`the egress proxy refused CONNECT ${target}: ${res.statusCode} ${res.statusMessage}`));
    });
    req.once("connect", (res, socket, head) => {
      req.setTimeout(0);
      socket.setTimeout(0);
      if (res.statusCode !== 200) {
        socket.destroy();
        reject(new Error(`the egress proxy refused CONNECT ${target}: ${res.statusCode} ${res.statusMessage}`));
        return;
      }
      req.off("error", reject);
      if (head.length) socket.unshift(head);
      resolve(socket);
    });
    req.end();
  });
}
