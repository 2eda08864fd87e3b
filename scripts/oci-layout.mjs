// Makes an OCI image layout from a directory, for the benchmarks and tests that feed a real
// registry (skopeo copy oci:DIR:TAG docker://…): the directory as one gzipped layer, a config
// with the given process settings, a manifest and an index naming it TAG.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { gzipSync } from "node:zlib";

const sha = (b) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/**
 * Writes the layout into `layout` (created) and returns the layer's compressed size in bytes.
 * `config` is the image config's `config` object (Env, Cmd, WorkingDir, ...).
 */
export function ociLayout({ rootfs, layout, tag, config = {}, architecture = "amd64" }) {
  const tar = execFileSync("tar", ["-C", rootfs, "--numeric-owner", "-c", "."], { maxBuffer: 1 << 30 });
  const layer = gzipSync(tar, { level: 1 });
  mkdirSync(path.join(layout, "blobs", "sha256"), { recursive: true });
  const put = (b) => (writeFileSync(path.join(layout, "blobs", "sha256", sha(b).slice(7)), b), { digest: sha(b), size: b.length });
  const imageConfig = Buffer.from(JSON.stringify({ architecture, os: "linux", config, rootfs: { type: "layers", diff_ids: [sha(tar)] } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", ...put(imageConfig) },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", ...put(layer) }],
    }),
  );
  const m = put(manifest);
  writeFileSync(path.join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  writeFileSync(
    path.join(layout, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", ...m, annotations: { "org.opencontainers.image.ref.name": tag } }],
    }),
  );
  return layer.length;
}
