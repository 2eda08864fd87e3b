// buildImage: a base image plus steps, run in a microVM, stored as a new image.
import type { BuildOptions, BuildSpec, BuiltImage } from "./spec.js";
import { checkSpec } from "./spec.js";

/** Builds `spec` into the image store under spec.tag. Throws BuildError when a step fails. */
export async function buildImage(spec: BuildSpec, _opts: BuildOptions = {}): Promise<BuiltImage> {
  checkSpec(spec);
  throw new Error("buildImage: under construction on branch build");
}
