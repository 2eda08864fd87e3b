// Platforms in OCI terms (os/architecture/variant): this host's, how they print, and which entry of an
// image index serves a wanted one.
import { PlatformNotFoundError } from "../errors.js";
import type { ImageReference } from "./reference.js";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const GOARCH: Partial<Record<NodeJS.Architecture, string>> = {
  x64: "amd64",
  arm64: "arm64",
  arm: "arm",
  ia32: "386",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
};

/** The platform this process runs on, in OCI terms: linux/amd64 or linux/arm64. */
export function hostPlatform(): Platform {
  return { os: "linux", architecture: GOARCH[process.arch] ?? process.arch };
}

export function formatPlatform(p: Platform | undefined): string {
  if (!p) return "unknown";
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

/** Whether an index entry's platform serves `want`; arm64 treats variant "v8" and none as the same. */
export function platformMatches(want: Platform, have: Platform | undefined): boolean {
  if (!have || have.os !== want.os || have.architecture !== want.architecture) return false;
  const norm = (v: string | undefined) => (want.architecture === "arm64" && v === "v8" ? undefined : v || undefined);
  if (want.variant === undefined) return want.architecture === "arm64" ? norm(have.variant) === undefined : true;
  return norm(have.variant) === norm(want.variant);
}

/**
 * The first entry of `ref`'s index that serves `platform`. Entries come from the registry unchecked,
 * hence the null-safe reads. Throws PlatformNotFoundError listing what the index has instead.
 */
export function selectPlatform<T extends { platform?: Platform }>(entries: T[], platform: Platform, ref: ImageReference): T {
  const chosen = entries.find((d) => platformMatches(platform, d?.platform));
  if (!chosen) {
    // "unknown/unknown" entries are attestations (provenance, SBOMs), not images.
    const available = entries.map((d) => formatPlatform(d?.platform)).filter((p) => p !== "unknown/unknown");
    throw new PlatformNotFoundError(
      `${ref} has no image for ${formatPlatform(platform)}; it has ${available.join(", ") || "none"}. ` +
        `Pick one with getManifest(ref, { os, architecture, variant }) or use an image built for this platform`,
      available,
    );
  }
  return chosen;
}
