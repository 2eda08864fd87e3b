// Test helpers: Debian's docker-registry on 127.0.0.1 (optionally behind token auth served from this
// process, optionally over TLS with a certificate authority of its own), small OCI/Docker images
// built in memory, and a push over the distribution API.
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes, sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";

export interface TokenAuthOptions {
  /** username → password accepted by the token server. */
  users: Record<string, string>;
  /** Repositories anonymous clients may pull; default: all but "private/…". */
  anonymousPull?: (repository: string) => boolean;
}

export interface TokenRequest {
  user: string | undefined;
  scopes: string[];
  status: number;
}

export interface TestRegistry {
  /** "127.0.0.1:<port>", as written in image references. */
  host: string;
  url: string;
  /** With TLS: the certificate authority's certificate (PEM file) that signed the registry's. */
  ca?: string;
  storage: string;
  /** Requests the token server answered, in order (token auth only). */
  tokenRequests: TokenRequest[];
  /** A token granting pull and push on `repository` (token auth only; undefined otherwise). */
  pushToken(repository: string): string | undefined;
  push(repository: string, tag: string, image: TestImage | TestIndex): Promise<void>;
  /** Where the registry keeps a blob's bytes, for tampering. */
  blobPath(digest: string): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts `docker-registry serve` on a free port with a temp storage dir; with `tokenAuth`, also a token server. */
export async function startRegistry(options: { tokenAuth?: TokenAuthOptions; tls?: boolean } = {}): Promise<TestRegistry> {
  const dir = mkdtempSync(path.join(tmpdir(), "msb-registry-test-"));
  const storage = path.join(dir, "storage");
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const tokenRequests: TokenRequest[] = [];
  let tokenServer: http.Server | undefined;
  let mint: ((access: Access[]) => string) | undefined;
  const config: Record<string, unknown> = {
    version: "0.1",
    log: { level: "error", accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: storage }, delete: { enabled: true }, maintenance: { uploadpurging: { enabled: false } } },
    http: { addr: host, secret: randomBytes(16).toString("hex") },
  };

  if (options.tokenAuth) {
    const auth = options.tokenAuth;
    const key = path.join(dir, "token.key");
    const cert = path.join(dir, "token.crt");
    execFileSync(
      "openssl",
      ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=msb-test-token-issuer"],
      { stdio: "ignore" },
    );
    const keyPem = readFileSync(key, "utf8");
    // x5c carries the signing certificate; the registry checks it chains to rootcertbundle (itself here).
    const certDer = readFileSync(cert, "utf8").replace(/-----[^-]+-----|\s/g, "");
    const service = "msb-test-registry";
    const issuer = "msb-test-issuer";
    mint = (access) => {
      const now = Math.floor(Date.now() / 1000);
      const header = { typ: "JWT", alg: "RS256", x5c: [certDer] };
      const claims = { iss: issuer, sub: "test", aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString("hex"), access };
      const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
      return `${input}.${b64url(sign("sha256", Buffer.from(input), keyPem))}`;
    };
    const anonymousPull = auth.anonymousPull ?? ((repo: string) => !repo.startsWith("private/"));
    tokenServer = http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://x");
      const scopes = url.searchParams.getAll("scope");
      let user: string | undefined;
      const basic = /^Basic (.+)$/i.exec(req.headers.authorization ?? "");
      if (basic) {
        const decoded = Buffer.from(basic[1]!, "base64").toString("utf8");
        const [name, ...rest] = decoded.split(":");
        if (auth.users[name!] === undefined || auth.users[name!] !== rest.join(":")) {
          tokenRequests.push({ user: name, scopes, status: 401 });
          res.writeHead(401, { "content-type": "application/json", "www-authenticate": 'Basic realm="token"' });
          res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "invalid username or password" }] }));
          return;
        }
        user = name;
      }
      const access: Access[] = [];
      for (const scope of scopes) {
        const [type, name, actions] = scope.split(":");
        if (type !== "repository" || !name) continue;
        const allowed = (actions ?? "").split(",").filter((a) => a === "pull" && (user !== undefined || anonymousPull(name)));
        access.push({ type, name, actions: allowed });
      }
      tokenRequests.push({ user, scopes, status: 200 });
      const token = mint!(access);
      res.writeHead(200, { "content-type": "application/json" });
      // Both spellings, as Docker Hub does; the client must accept either.
      res.end(JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() }));
    });
    await new Promise<void>((resolve) => tokenServer!.listen(0, "127.0.0.1", resolve));
    const realm = `http://127.0.0.1:${(tokenServer.address() as AddressInfo).port}/token`;
    config.auth = { token: { realm, service, issuer, rootcertbundle: cert } };
  }

  let ca: string | undefined;
  if (options.tls) {
    ca = path.join(dir, "ca.crt");
    const [caKey, key, csr, cert] = ["ca.key", "server.key", "server.csr", "server.crt"].map((f) => path.join(dir, f)) as [string, string, string, string];
    const ssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "ignore" });
    ssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      caKey,
      "-out",
      ca,
      "-days",
      "2",
      "-subj",
      "/CN=msb-test-ca",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    );
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1");
    const ext = path.join(dir, "server.ext");
    writeFileSync(ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
    ssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext);
    (config.http as Record<string, unknown>).tls = { certificate: cert, key };
  }

  // JSON is YAML, so the config needs no YAML writer.
  const configPath = path.join(dir, "config.yml");
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const proc = spawn("docker-registry", ["serve", configPath], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (chunk: Buffer) => {
    log = (log + chunk.toString("utf8")).slice(-8192);
  };
  proc.stdout!.on("data", keep);
  proc.stderr!.on("data", keep);
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const url = `${ca ? "https" : "http"}://${host}`;
  const status = (u: string) =>
    new Promise<number>((resolve, reject) => {
      const req = (ca ? https : http).get(u, ca ? { ca: readFileSync(ca) } : {}, (res) => (res.resume(), resolve(res.statusCode ?? 0)));
      req.once("error", reject);
    });
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error(`docker-registry exited with ${proc.exitCode}:\n${log}`);
    try {
      const code = await status(`${url}/v2/`);
      if (code === 200 || code === 401) break;
    } catch {
      // Not listening yet.
    }
    if (i > 200) throw new Error(`docker-registry did not answer on ${url}/v2/ within 10 s:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }

  const pushToken = (repository: string) => mint?.([{ type: "repository", name: repository, actions: ["pull", "push"] }]);
  return {
    host,
    url,
    ...(ca ? { ca } : {}),
    storage,
    tokenRequests,
    pushToken,
    push: (repository, tag, image) => pushImage(url, repository, tag, image, { token: pushToken(repository) }),
    blobPath: (digest) => {
      const hex = digest.slice("sha256:".length);
      return path.join(storage, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      await exited;
      if (tokenServer) await new Promise((resolve) => tokenServer!.close(resolve));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface Access {
  type: string;
  name: string;
  actions: string[];
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

// ---- images ----

export const OCI = {
  manifest: "application/vnd.oci.image.manifest.v1+json",
  index: "application/vnd.oci.image.index.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layer: "application/vnd.oci.image.layer.v1.tar+gzip",
};
export const DOCKER = {
  manifest: "application/vnd.docker.distribution.manifest.v2+json",
  index: "application/vnd.docker.distribution.manifest.list.v2+json",
  config: "application/vnd.docker.container.image.v1+json",
  layer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
};

export interface TestDescriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface TestImage {
  kind: "image";
  mediaType: string;
  /** The manifest bytes as pushed. */
  bytes: Buffer;
  digest: string;
  platform: { os: string; architecture: string; variant?: string };
  config: TestDescriptor;
  layers: TestDescriptor[];
  /** Every blob (config and layers) by digest. */
  blobs: Map<string, Buffer>;
}

export interface TestIndex {
  kind: "index";
  mediaType: string;
  bytes: Buffer;
  digest: string;
  images: TestImage[];
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** A ustar archive of regular files (and directories, for names ending in '/'). */
export function tarball(files: Record<string, string | Buffer>): Buffer {
  const blocks: Buffer[] = [];
  for (const [name, content] of Object.entries(files)) {
    const isDir = name.endsWith("/");
    const data = isDir ? Buffer.alloc(0) : Buffer.from(content);
    const header = Buffer.alloc(512);
    const field = (offset: number, length: number, value: string) => header.write(value, offset, length, "utf8");
    const octal = (offset: number, length: number, value: number) => field(offset, length, `${value.toString(8).padStart(length - 1, "0")}\0`);
    field(0, 100, name);
    octal(100, 8, isDir ? 0o755 : 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, data.length);
    octal(136, 12, 1_700_000_000);
    field(148, 8, "        ");
    field(156, 1, isDir ? "5" : "0");
    field(257, 8, "ustar\u000000");
    let sum = 0;
    for (const byte of header) sum += byte;
    field(148, 8, `${sum.toString(8).padStart(6, "0")}\0 `);
    blocks.push(header, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

export interface ImageSpec {
  platform?: { os?: string; architecture: string; variant?: string };
  /** One record of files per layer. */
  layers?: Record<string, string | Buffer>[];
  /** Ready-made gzipped layer tars (e.g. `tar -cz` of a real root filesystem), used instead of `layers`. */
  gzipLayers?: Buffer[];
  env?: string[];
  cmd?: string[];
  workingDir?: string;
  /** Docker v2 media types instead of OCI. */
  docker?: boolean;
}

export function buildImage(spec: ImageSpec = {}): TestImage {
  const types = spec.docker ? DOCKER : OCI;
  const platform = {
    os: spec.platform?.os ?? "linux",
    architecture: spec.platform?.architecture ?? "amd64",
    ...(spec.platform?.variant ? { variant: spec.platform.variant } : {}),
  };
  const blobs = new Map<string, Buffer>();
  const diffIds: string[] = [];
  const layers: TestDescriptor[] = [];
  const gzipped = spec.gzipLayers ?? (spec.layers ?? [{ "hello.txt": `hello from ${platform.architecture}\n` }]).map((files) => gzipSync(tarball(files)));
  for (const gz of gzipped) {
    diffIds.push(sha256(gunzipSync(gz)));
    blobs.set(sha256(gz), gz);
    layers.push({ mediaType: types.layer, digest: sha256(gz), size: gz.length });
  }
  const configJson = Buffer.from(
    JSON.stringify({
      ...platform,
      created: "2024-01-01T00:00:00Z",
      config: { Env: spec.env ?? ["PATH=/usr/local/bin:/usr/bin:/bin"], Cmd: spec.cmd ?? ["/bin/sh"], WorkingDir: spec.workingDir ?? "/" },
      rootfs: { type: "layers", diff_ids: diffIds },
      history: diffIds.map(() => ({ created: "2024-01-01T00:00:00Z", created_by: "msb test" })),
    }),
  );
  blobs.set(sha256(configJson), configJson);
  const config = { mediaType: types.config, digest: sha256(configJson), size: configJson.length };
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: types.manifest, config, layers }, null, 2));
  return { kind: "image", mediaType: types.manifest, bytes, digest: sha256(bytes), platform, config, layers, blobs };
}

export function buildIndex(images: TestImage[], options: { docker?: boolean } = {}): TestIndex {
  const types = options.docker ? DOCKER : OCI;
  const manifests = images.map((image) => ({ mediaType: image.mediaType, digest: image.digest, size: image.bytes.length, platform: image.platform }));
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: types.index, manifests }, null, 2));
  return { kind: "index", mediaType: types.index, bytes, digest: sha256(bytes), images };
}

/** Pushes blobs, then manifests (an index's images by digest first), then tags the top one. */
export async function pushImage(
  registryUrl: string,
  repository: string,
  tag: string,
  image: TestImage | TestIndex,
  options: { token?: string | undefined } = {},
): Promise<void> {
  const auth: Record<string, string> = options.token ? { authorization: `Bearer ${options.token}` } : {};
  const check = async (res: Response, what: string, want: number) => {
    if (res.status !== want) throw new Error(`push ${what} to ${registryUrl}/${repository}: ${res.status} ${await res.text()}`);
    await res.body?.cancel();
  };
  const pushOne = async (img: TestImage) => {
    for (const [digest, data] of img.blobs) {
      const start = await fetch(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: "POST", headers: auth });
      await check(start, "upload start", 202);
      const location = new URL(start.headers.get("location")!, registryUrl);
      location.searchParams.set("digest", digest);
      const put = await fetch(location, {
        method: "PUT",
        headers: { ...auth, "content-type": "application/octet-stream", "content-length": String(data.length) },
        body: data,
      });
      await check(put, `blob ${digest}`, 201);
    }
  };
  const putManifest = async (reference: string, mediaType: string, bytes: Buffer) => {
    const res = await fetch(`${registryUrl}/v2/${repository}/manifests/${reference}`, {
      method: "PUT",
      headers: { ...auth, "content-type": mediaType },
      body: bytes,
    });
    await check(res, `manifest ${reference}`, 201);
  };
  if (image.kind === "image") {
    await pushOne(image);
    await putManifest(tag, image.mediaType, image.bytes);
    return;
  }
  for (const img of image.images) {
    await pushOne(img);
    await putManifest(img.digest, img.mediaType, img.bytes);
  }
  await putManifest(tag, image.mediaType, image.bytes);
}

// ---- a proxy that misbehaves on purpose ----

export interface FaultyProxy {
  host: string;
  /** GETs of blobs seen, in order. */
  blobRequests: string[];
  /** The next `n` blob GETs are cut off halfway through the body. */
  cutNext(n: number): void;
  /** The next `n` blob GETs answer 307 to the registry itself (another origin). */
  redirectNext(n: number): void;
  /** How many redirects it has answered. */
  redirects: number;
  close(): Promise<void>;
}

/** An HTTP proxy in front of `target` ("127.0.0.1:port") that can cut off or redirect blob downloads. */
export async function startFaultyProxy(target: string): Promise<FaultyProxy> {
  const [targetHost, targetPort] = target.split(":") as [string, string];
  let cuts = 0;
  let redirectCount = 0;
  const state: FaultyProxy = {
    host: "",
    blobRequests: [],
    cutNext: (n) => {
      cuts = n;
    },
    redirectNext: (n) => {
      redirectCount = n;
    },
    redirects: 0,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  const server = http.createServer((req, res) => {
    const isBlob = req.method === "GET" && /\/blobs\/sha256:/.test(req.url ?? "");
    if (isBlob) state.blobRequests.push(req.url!);
    if (isBlob && redirectCount > 0) {
      redirectCount--;
      state.redirects++;
      res.writeHead(307, { location: `http://${target}${req.url}` });
      res.end();
      return;
    }
    const cut = isBlob && cuts > 0;
    if (cut) cuts--;
    const upstream = http.request({ host: targetHost, port: Number(targetPort), method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      if (!cut) {
        up.pipe(res);
        return;
      }
      const half = Math.floor(Number(up.headers["content-length"] ?? 0) / 2);
      let sent = 0;
      up.on("data", (chunk: Buffer) => {
        if (sent >= half) return;
        const part = chunk.subarray(0, half - sent);
        sent += part.length;
        res.write(part);
        if (sent >= half) {
          up.destroy();
          // Let the bytes leave before the connection drops mid-body.
          setTimeout(() => res.socket?.destroy(), 20);
        }
      });
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return state;
}
