// Path of msb-vmm, the per-VM helper built with the addon (build/Release/msb-vmm).
import { accessSync, constants } from "node:fs";
import { fileURLToPath } from "node:url";

import { VmmHelperError } from "../errors.js";


export function vmmHelperPath(): string {
  const path = fileURLToPath(new URL("../../build/Release/msb-vmm", import.meta.url));
  try {
    accessSync(path, constants.X_OK);
  } catch (err) {
    throw new VmmHelperError(`the VM helper ${path} is missing: rebuild the native parts (npm rebuild microsandbox)`, { cause: err });
  }
  return path;
}
