// RegistryClient against a real docker-registry on 127.0.0.1: tags, digests, indexes, Docker v2
// media types, token auth, tampered and cut-off blobs, and the refusal of unmarked plain HTTP.

import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { DigestMismatchError, InvalidArgumentError } from "../../src/errors.js";
import { parseReference, registryHost } from "../../src/images/reference.js";
import { hostPlatform, PlatformNotFoundError, type PullEvent, parseChallenges, RegistryClient, RegistryError } from "../../src/images/registry.js";
import { buildImage, buildIndex, type FaultyProxy, startFaultyProxy, startRegistry, type TestImage, type TestRegistry } from "./registry-helpers.js";

const HEX = "a".repeat(64);

describe("parseReference", () => {
  it.each([
    ["python", "docker.io", "library/python", "latest", undefined, "docker.io/library/python:latest"],
    ["python:3.12-slim", "docker.io", "library/python", "3.12-slim", undefined, "docker.io/library/python:3.12-slim"],
    ["user/app", "docker.io", "user/app", "latest", undefined, "docker.io/user/app:latest"],
    ["docker.io/library/busybox", "docker.io", "library/busybox", "latest", undefined, "docker.io/library/busybox:latest"],
    ["index.docker.io/user/app:1", "docker.io", "user/app", "1", undefined, "docker.io/user/app:1"],
    ["localhost/app", "localhost", "app", "latest", undefined, "localhost/app:latest"],
    ["localhost:5000/a/b:tag", "localhost:5000", "a/b", "tag", undefined, "localhost:5000/a/b:tag"],
    ["127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", undefined, "127.0.0.1:5000/x:latest"],
    [`ghcr.io/o/r@sha256:${HEX}`, "ghcr.io", "o/r", undefined, `sha256:${HEX}`, `ghcr.io/o/r@sha256:${HEX}`],
    [`name:tag@sha256:${HEX}`, "docker.io", "library/name", "tag", `sha256:${HEX}`, `docker.io/library/name:tag@sha256:${HEX}`],
    ["a.b/c.d_e__f-g/h", "a.b", "c.d_e__f-g/h", "latest", undefined, "a.b/c.d_e__f-g/h:latest"],
  ])("%s", (input, registry, repository, tag, digest, text) => {
    const ref = parseReference(input);
    expect({ registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: ref.digest }).toEqual({ registry, repository, tag, digest });
    expect(String(ref)).toBe(text);
    expect(String(parseReference(text))).toBe(text);
  });

  it.each([
    ["", "empty"],
    ["Python", "lowercase"],
    ["user/App:1", "lowercase"],
    ["python@sha256:abc", "digest"],
    [`python@sha256:${"A".repeat(64)}`, "digest"],
    [`python@md5:${HEX}`, "digest"],
    ["python:", "tag"],
    ["python:-x", "tag"],
    ["a//b", "repository"],
    ["ghcr.io/", "empty"],
    [" python", "whitespace"],
  ])("rejects %j", (input, why) => {
    let error: unknown;
    try {
      parseReference(input);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toContain(JSON.stringify(input));
    expect((error as Error).message).toContain(why);
  });

  it("maps docker.io to its API host", () => {
    expect(registryHost("docker.io")).toBe("registry-1.docker.io");
    expect(registryHost("ghcr.io")).toBe("ghcr.io");
  });
});

describe("parseChallenges", () => {
  it("reads Bearer and Basic challenges with quoted commas", () => {
    expect(parseChallenges('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push", Basic realm="x"')).toEqual([
      { scheme: "bearer", params: { realm: "https://auth.example/token", service: "registry.example", scope: "repository:a/b:pull,push" } },
      { scheme: "basic", params: { realm: "x" } },
    ]);
  });
});

describe("RegistryClient safety limits (fake fetch)", () => {
  const ref = `registry.example/app@sha256:${HEX}`;

  it("refuses a manifest over 4 MiB", async () => {
    const fake = (async () => new Response("{}", { status: 200, headers: { "content-length": String(5 * 1024 * 1024) } })) as typeof fetch;
    const err = await errorOf(new RegistryClient({ fetch: fake, dockerConfig: "/nonexistent" }).getManifest(ref));
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as Error).message).toContain("limit");
  });

  it("never follows a redirect from HTTPS to HTTP", async () => {
    const urls: string[] = [];
    const fake = (async (url: URL) => {
      urls.push(String(url));
      return new Response(null, { status: 307, headers: { location: "http://registry.example/elsewhere" } });
    }) as unknown as typeof fetch;
    const err = await errorOf(new RegistryClient({ fetch: fake, dockerConfig: "/nonexistent" }).getManifest(ref));
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as Error).message).toContain("refusing to leave HTTPS");
    expect(urls).toEqual([`https://registry.example/v2/app/manifests/sha256:${HEX}`]);
  });
});

/** Unique content per call, so tests never share blobs by accident. */
function uniqueImage(spec: Parameters<typeof buildImage>[0] = {}): TestImage {
  return buildImage({
    layers: [{ "id.txt": randomBytes(8).toString("hex") }, { "etc/": "", "etc/motd": "hi\n" }],
    env: ["A=1"],
    cmd: ["/bin/app"],
    workingDir: "/srv",
    ...spec,
  });
}

function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error("expected a rejection");
    },
    (err: unknown) => err,
  );
}

describe("RegistryClient on a plain registry", () => {
  let registry: TestRegistry;
  let client: RegistryClient;
  let dest: string;

  beforeAll(async () => {
    registry = await startRegistry();
    client = new RegistryClient({ insecure: [registry.host], dockerConfig: "/nonexistent/config.json" });
    dest = mkdtempSync(path.join(tmpdir(), "msb-pull-test-"));
  });
  afterAll(async () => {
    await registry?.stop();
    rmSync(dest, { recursive: true, force: true });
  });

  it("pulls a tag: manifest, config and layers, verified", async () => {
    const image = uniqueImage();
    await registry.push("app/hello", "v1", image);
    const resolved = await client.getManifest(`${registry.host}/app/hello:v1`);
    expect(resolved.digest).toBe(image.digest);
    expect(resolved.mediaType).toBe("application/vnd.oci.image.manifest.v1+json");
    expect(resolved.raw.equals(image.bytes)).toBe(true);
    expect(resolved.config).toEqual(image.config);
    expect(resolved.layers).toEqual(image.layers);
    expect(String(resolved.ref)).toBe(`${registry.host}/app/hello:v1@${image.digest}`);

    const config = path.join(dest, "tag-config.json");
    await client.fetchBlob(resolved.ref, resolved.config, config);
    const parsed = JSON.parse(readFileSync(config, "utf8"));
    expect(parsed.config).toEqual({ Env: ["A=1"], Cmd: ["/bin/app"], WorkingDir: "/srv" });
    for (const layer of resolved.layers) {
      const file = path.join(dest, "tag-layers", layer.digest);
      const seen: number[] = [];
      await client.fetchBlob(resolved.ref, layer, file, (bytes) => seen.push(bytes));
      expect(readFileSync(file).equals(image.blobs.get(layer.digest)!)).toBe(true);
      expect(seen.at(-1)).toBe(layer.size);
    }
    expect(readdirSync(path.join(dest, "tag-layers")).sort()).toEqual(resolved.layers.map((l) => l.digest).sort());
  });

  it("pulls by digest and reports progress events", async () => {
    const image = uniqueImage();
    await registry.push("app/pinned", "v1", image);
    const ref = `${registry.host}/app/pinned@${image.digest}`;
    const resolved = await client.getManifest(ref);
    expect(resolved.digest).toBe(image.digest);

    const events: PullEvent[] = [];
    const dir = path.join(dest, "pull");
    await client.pull(ref, dir, { onEvent: (e) => events.push(e) });
    expect(events[0]).toMatchObject({ type: "resolved", digest: image.digest, layers: image.layers });
    expect(events.at(-1)).toMatchObject({ type: "done", digest: image.digest });
    const done = events.filter((e) => e.type === "layer-done").map((e) => (e as { digest: string }).digest);
    expect(done.sort()).toEqual([image.config.digest, ...image.layers.map((l) => l.digest)].sort());
    for (const [digest, data] of image.blobs) {
      expect(readFileSync(path.join(dir, "blobs", "sha256", digest.slice(7))).equals(data)).toBe(true);
    }
    // A second pull finds everything in place.
    const again: PullEvent[] = [];
    await client.pull(ref, dir, { onEvent: (e) => again.push(e) });
    expect(again.filter((e) => e.type === "layer-cached")).toHaveLength(image.blobs.size);
  });

  it("picks the host's platform from an index, and the one asked for", async () => {
    const amd64 = uniqueImage({ platform: { architecture: "amd64" } });
    const arm64v8 = uniqueImage({ platform: { architecture: "arm64", variant: "v8" } });
    const ppc = uniqueImage({ platform: { architecture: "ppc64le" } });
    await registry.push("multi/app", "latest", buildIndex([ppc, amd64, arm64v8]));
    const arm64 = uniqueImage({ platform: { architecture: "arm64" } });
    await registry.push("multi/app", "arm-plain", buildIndex([ppc, arm64]));

    const ref = `${registry.host}/multi/app`;
    const host = await client.getManifest(ref);
    expect(host.digest).toBe(hostPlatform().architecture === "arm64" ? arm64v8.digest : amd64.digest);
    expect(host.indexDigest).toBeDefined();
    expect((await client.getManifest(ref, { os: "linux", architecture: "arm64" })).digest).toBe(arm64v8.digest);
    expect((await client.getManifest(ref, { os: "linux", architecture: "ppc64le" })).digest).toBe(ppc.digest);
    // arm64 with variant v8 and arm64 without a variant are the same platform.
    expect((await client.getManifest(`${ref}:arm-plain`, { os: "linux", architecture: "arm64", variant: "v8" })).digest).toBe(arm64.digest);

    const err = await errorOf(client.getManifest(ref, { os: "linux", architecture: "s390x" }));
    expect(err).toBeInstanceOf(PlatformNotFoundError);
    expect((err as PlatformNotFoundError).available).toEqual(["linux/ppc64le", "linux/amd64", "linux/arm64/v8"]);
    expect((err as Error).message).toContain("linux/s390x");
    expect((err as Error).message).toContain("linux/ppc64le, linux/amd64, linux/arm64/v8");
  });

  it("reads Docker v2 manifests and manifest lists", async () => {
    const image = uniqueImage({ docker: true, platform: { architecture: hostPlatform().architecture } });
    await registry.push("docker/app", "single", image);
    const single = await client.getManifest(`${registry.host}/docker/app:single`);
    expect(single.mediaType).toBe("application/vnd.docker.distribution.manifest.v2+json");
    expect(single.digest).toBe(image.digest);
    expect(single.layers[0]!.mediaType).toBe("application/vnd.docker.image.rootfs.diff.tar.gzip");

    const other = uniqueImage({ docker: true, platform: { architecture: "ppc64le" } });
    const list = buildIndex([other, image], { docker: true });
    await registry.push("docker/app", "list", list);
    const picked = await client.getManifest(`${registry.host}/docker/app:list`);
    expect(picked.digest).toBe(image.digest);
    expect(picked.indexDigest).toBe(list.digest);
    const file = path.join(dest, "docker-layer");
    await client.fetchBlob(picked.ref, picked.layers[0]!, file);
    expect(readFileSync(file).equals(image.blobs.get(picked.layers[0]!.digest)!)).toBe(true);
  });

  it("rejects a tampered blob with DigestMismatchError and keeps nothing", async () => {
    const image = uniqueImage();
    await registry.push("tamper/app", "v1", image);
    const layer = image.layers[0]!;
    const stored = registry.blobPath(layer.digest);
    const original = readFileSync(stored);
    const tampered = Buffer.from(original);
    tampered[tampered.length - 5]! ^= 0xff;
    writeFileSync(stored, tampered);

    const dir = path.join(dest, "tamper");
    const file = path.join(dir, "layer");
    const err = await errorOf(client.fetchBlob(`${registry.host}/tamper/app:v1`, layer, file));
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect((err as DigestMismatchError).code).toBe("MSB_DIGEST_MISMATCH");
    expect((err as Error).message).toContain(layer.digest);
    expect((err as Error).message).toContain("tamper/app");
    expect(existsSync(file)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });

  it("verifies a manifest pinned by digest", async () => {
    const image = uniqueImage();
    await registry.push("tamper/manifest", "v1", image);
    // Same size, still valid JSON, different bytes: one indentation space becomes a tab.
    const stored = registry.blobPath(image.digest);
    writeFileSync(stored, readFileSync(stored, "utf8").replace("\n  ", "\n\t "));
    const err = await errorOf(client.getManifest(`${registry.host}/tamper/manifest@${image.digest}`));
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect((err as Error).message).toContain(image.digest);
  });

  it("refuses a descriptor whose size disagrees with what is served", async () => {
    const image = uniqueImage();
    await registry.push("size/app", "v1", image);
    const layer = image.layers[0]!;
    const file = path.join(dest, "size", "layer");
    const err = await errorOf(client.fetchBlob(`${registry.host}/size/app`, { digest: layer.digest, size: layer.size - 1 }, file));
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect(existsSync(file)).toBe(false);
  });

  it("gives a 404 RegistryError naming the tag for an unknown one", async () => {
    const err = await errorOf(client.getManifest(`${registry.host}/app/hello:nope`));
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).status).toBe(404);
    expect((err as Error).message).toContain("app/hello");
    expect((err as Error).message).toContain("nope");
  });

  it("refuses plain HTTP to a registry not marked insecure, and says how to allow it", async () => {
    const strict = new RegistryClient({ dockerConfig: "/nonexistent/config.json" });
    const err = await errorOf(strict.getManifest(`${registry.host}/app/hello:v1`));
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).code).toBe("MSB_REGISTRY");
    expect((err as Error).message).toContain(`registry: { insecure: ["${registry.host}"] }`);
  });

  describe("through a proxy that cuts downloads", () => {
    let proxy: FaultyProxy;
    let image: TestImage;
    beforeAll(async () => {
      proxy = await startFaultyProxy(registry.host);
      // Random bytes do not compress: the layer stays large enough to cut in the middle.
      image = uniqueImage({ layers: [{ "big.bin": randomBytes(512 * 1024) }] });
      await registry.push("cut/app", "v1", image);
    });
    afterAll(async () => {
      await proxy?.close();
    });

    it("retries a cut-off body and succeeds", async () => {
      const retrying = new RegistryClient({ insecure: [proxy.host], retries: 2, retryDelay: 10, dockerConfig: "/nonexistent" });
      const layer = image.layers[0]!;
      const file = path.join(dest, "cut-ok", "layer");
      proxy.cutNext(1);
      const before = proxy.blobRequests.length;
      await retrying.fetchBlob(`${proxy.host}/cut/app:v1`, layer, file);
      expect(proxy.blobRequests.length - before).toBe(2);
      expect(readFileSync(file).equals(image.blobs.get(layer.digest)!)).toBe(true);
      expect(readdirSync(path.dirname(file))).toEqual(["layer"]);
    });

    it("with retries: 0 fails with a typed error and leaves no partial file", async () => {
      const once = new RegistryClient({ insecure: [proxy.host], retries: 0, dockerConfig: "/nonexistent" });
      const layer = image.layers[0]!;
      const file = path.join(dest, "cut-fail", "layer");
      proxy.cutNext(1);
      const err = await errorOf(once.fetchBlob(`${proxy.host}/cut/app:v1`, layer, file));
      expect(err).toBeInstanceOf(RegistryError);
      expect((err as Error).message).toContain(layer.digest);
      expect((err as Error).message).toContain("1 attempt");
      expect(existsSync(file)).toBe(false);
      expect(readdirSync(path.dirname(file))).toEqual([]);
    });

    it("follows a redirect to another origin", async () => {
      const following = new RegistryClient({ insecure: [proxy.host], dockerConfig: "/nonexistent" });
      const layer = image.layers[0]!;
      const file = path.join(dest, "redirect", "layer");
      proxy.redirectNext(1);
      await following.fetchBlob(`${proxy.host}/cut/app:v1`, layer, file);
      expect(proxy.redirects).toBe(1);
      expect(readFileSync(file).equals(image.blobs.get(layer.digest)!)).toBe(true);
    });
  });
});

describe("RegistryClient with token auth", () => {
  let registry: TestRegistry;
  let publicImage: TestImage;
  let privateImage: TestImage;
  let dest: string;

  beforeAll(async () => {
    registry = await startRegistry({ tokenAuth: { users: { alice: "s3cret" } } });
    publicImage = uniqueImage();
    privateImage = uniqueImage();
    await registry.push("public/app", "1", publicImage);
    await registry.push("private/app", "1", privateImage);
    dest = mkdtempSync(path.join(tmpdir(), "msb-pull-auth-test-"));
  });
  afterAll(async () => {
    await registry?.stop();
    rmSync(dest, { recursive: true, force: true });
  });

  it("pulls anonymously with a token, asking the token server once per scope", async () => {
    const client = new RegistryClient({ insecure: [registry.host], dockerConfig: "/nonexistent" });
    const before = registry.tokenRequests.length;
    const resolved = await client.getManifest(`${registry.host}/public/app:1`);
    expect(resolved.digest).toBe(publicImage.digest);
    await client.fetchBlob(resolved.ref, resolved.layers[0]!, path.join(dest, "anon-layer"));
    await client.fetchBlob(resolved.ref, resolved.config, path.join(dest, "anon-config"));
    const asked = registry.tokenRequests.slice(before);
    expect(asked).toEqual([{ user: undefined, scopes: ["repository:public/app:pull"], status: 200 }]);
  });

  it("needs credentials for a private repository and says how to give them", async () => {
    const client = new RegistryClient({ insecure: [registry.host], dockerConfig: "/nonexistent" });
    const err = await errorOf(client.getManifest(`${registry.host}/private/app:1`));
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).status).toBe(401);
    expect((err as Error).message).toContain(registry.host);
    expect((err as Error).message).toContain("private/app");
    expect((err as Error).message).toContain("give credentials");
  });

  it("pulls a private repository with a username and password", async () => {
    const client = new RegistryClient({
      insecure: [registry.host],
      dockerConfig: "/nonexistent",
      credentials: { [registry.host]: { username: "alice", password: "s3cret" } },
    });
    const resolved = await client.getManifest(`${registry.host}/private/app:1`);
    expect(resolved.digest).toBe(privateImage.digest);
    const file = path.join(dest, "private-layer");
    await client.fetchBlob(resolved.ref, resolved.layers[0]!, file);
    expect(readFileSync(file).equals(privateImage.blobs.get(resolved.layers[0]!.digest)!)).toBe(true);
    expect(registry.tokenRequests.at(-1)).toMatchObject({ user: "alice", status: 200 });
  });

  it("sends a given { token } as a Bearer token without asking the token server", async () => {
    const client = new RegistryClient({
      insecure: [registry.host],
      dockerConfig: "/nonexistent",
      credentials: { [registry.host]: { token: registry.pushToken("private/app")! } },
    });
    const before = registry.tokenRequests.length;
    expect((await client.getManifest(`${registry.host}/private/app:1`)).digest).toBe(privateImage.digest);
    expect(registry.tokenRequests.length).toBe(before);
  });

  it("reads credentials from a Docker config.json", async () => {
    const config = path.join(dest, "docker-config.json");
    writeFileSync(config, JSON.stringify({ auths: { [`http://${registry.host}`]: { auth: Buffer.from("alice:s3cret").toString("base64") } } }));
    const client = new RegistryClient({ insecure: [registry.host], dockerConfig: config });
    expect((await client.getManifest(`${registry.host}/private/app:1`)).digest).toBe(privateImage.digest);
  });

  it("reports a wrong password as a 401 RegistryError naming the registry", async () => {
    const client = new RegistryClient({
      insecure: [registry.host],
      dockerConfig: "/nonexistent",
      credentials: { [registry.host]: { username: "alice", password: "wrong" } },
    });
    const err = await errorOf(client.getManifest(`${registry.host}/private/app:1`));
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).status).toBe(401);
    expect((err as Error).message).toContain(registry.host);
    expect((err as Error).message).toContain("rejected the credentials");
    expect((err as Error).message).toContain('"alice"');
    expect((err as Error).message).not.toContain("wrong");
  });
});
