// Types of oci-layout.mjs, for the tests that import it.
export function ociLayout(opts: { rootfs: string; layout: string; tag: string; config?: Record<string, unknown>; architecture?: string }): number;
