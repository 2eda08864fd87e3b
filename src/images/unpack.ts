// Turns an image's layers into a root filesystem: each layer blob is decompressed as a stream
// (gzip through zlib, zstd through zlib where Node has it or the zstd binary) and applied in order,
// path-safely, by applyLayer. The caller publishes the result atomically.
import { spawn } from "node:child_process";
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { PassThrough, type Readable, type Transform } from "node:stream";
import zlib from "node:zlib";

import { LayerFormatError } from "../errors.js";
import { applyLayer, type LayerStats } from "./layers.js";


export interface LayerSource {
  /** sha256 digest of the blob, for messages. */
  digest: string;
  /** Path of the (possibly compressed) layer tar. */
  path: string;
}

const GZIP = [0x1f, 0x8b];
const ZSTD = [0x28, 0xb5, 0x2f, 0xfd];
const starts = (head: Buffer, magic: number[]) => magic.every((b, i) => head[i] === b);

type ZstdZlib = typeof zlib & { createZstdDecompress?: () => Transform };

function zstdStream(input: Readable, digest: string): Readable {
  const native = (zlib as ZstdZlib).createZstdDecompress;
  if (native) return chain(input, native());
  // Node < 22.15 has no zstd: the zstd CLI decompresses instead.
  const child = spawn("zstd", ["-dc"], { stdio: ["pipe", "pipe", "pipe"] });
  const out = new PassThrough();
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  child.on("error", (err) =>
    out.destroy(new LayerFormatError(`layer ${digest} is zstd-compressed and this Node has no zstd; install the zstd tool (apt-get install zstd)`, { cause: err })),
  );
  child.on("exit", (code) => {
    if (code) out.destroy(new LayerFormatError(`zstd could not decompress layer ${digest}: ${stderr.trim()}`));
  });
  child.stdin.on("error", () => {}); // zstd exiting early is reported through its exit code
  input.on("error", (err) => out.destroy(err));
  input.pipe(child.stdin);
  child.stdout.pipe(out);
  // Whoever stops reading (an applied layer, or a refused one) ends the whole chain.
  out.on("close", () => {
    input.destroy();
    child.kill("SIGKILL");
  });
  return out;
}

// input → transform, with errors of either side ending both.
function chain(input: Readable, transform: Transform): Readable {
  input.on("error", (err) => transform.destroy(err));
  transform.on("close", () => input.destroy());
  return input.pipe(transform);
}

/** Opens a layer blob as its decompressed tar stream, by the blob's magic bytes (media types lie). */
export async function openLayer(layer: LayerSource): Promise<Readable> {
  const head = Buffer.alloc(4);
  const handle = await open(layer.path, "r");
  try {
    await handle.read(head, 0, 4, 0);
  } finally {
    await handle.close();
  }
  const raw = createReadStream(layer.path, { highWaterMark: 1 << 20 });
  if (starts(head, GZIP)) return chain(raw, zlib.createGunzip());
  if (starts(head, ZSTD)) return zstdStream(raw, layer.digest);
  return raw;
}

/** Applies the layers in order onto `rootfs` (an empty directory). */
export async function unpackLayers(layers: LayerSource[], rootfs: string, onLayer?: (l: LayerSource, s: LayerStats) => void): Promise<void> {
  for (const layer of layers) {
    const stream = await openLayer(layer);
    try {
      const stats = await applyLayer(stream, rootfs, { layer: layer.digest });
      onLayer?.(layer, stats);
    } finally {
      stream.destroy();
    }
  }
}
