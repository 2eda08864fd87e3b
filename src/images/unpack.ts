// Turns an image's layers into a root filesystem: each layer blob is decompressed as a stream
// (gzip through zlib, zstd through zlib where Node has it, else fzstd) and applied in order,
// path-safely, by applyLayer. The caller publishes the result atomically.
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { type Readable, Transform } from "node:stream";
import zlib from "node:zlib";

import { Decompress } from "fzstd";

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
  // Node < 22.15 has no zstd: fzstd, a zstd decoder in JavaScript, decompresses instead, so no
  // host tool is needed either way.
  return chain(input, native ? native() : fzstdTransform(digest));
}

// fzstd's streaming decoder as a Transform: chunks in, decompressed chunks out, a malformed
// frame a LayerFormatError. A frame may ask for a window of up to 2 GiB: address space that is
// only touched as output is written, and output is bounded by the layer's size caps downstream.
function fzstdTransform(digest: string): Transform {
  let push: (chunk: Uint8Array) => void = () => {};
  const decoder = new Decompress((chunk) => push(chunk));
  const feed = (chunk: Uint8Array, final: boolean, done: (err?: Error) => void) => {
    try {
      decoder.push(chunk, final);
      done();
    } catch (err) {
      done(new LayerFormatError(`zstd could not decompress layer ${digest}: ${(err as Error).message}`, { cause: err }));
    }
  };
  const t = new Transform({
    transform: (chunk: Buffer, _enc, done) => feed(chunk, false, done),
    flush: (done) => feed(new Uint8Array(0), true, done),
  });
  push = (chunk) => t.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  return t;
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
