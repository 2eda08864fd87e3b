// Types of harness.mjs (plain JavaScript, so that benchmarks run it with node as the tests do).
export const usable: boolean;
export const HOST: string;
export const PUBLIC: string;
export const OTHER: string;
export const THIRD: string;
export const PRIVATE: string;
export const METADATA: string;
export const TEST_CA: string;
/** Builds the namespaces and starts their services (beforeAll). */
export function buildInternet(): Promise<void>;
/** Stops the services and removes the namespaces (afterAll). */
export function removeInternet(): void;
