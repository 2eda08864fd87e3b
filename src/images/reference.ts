// Image references ("python", "ghcr.io/o/r@sha256:…") parsed and normalised the way Docker does,
// so that one name always means the same registry, repository and tag.
import { InvalidArgumentError } from "../errors.js";

export interface ImageReference {
  /** "docker.io", "ghcr.io", "localhost:5000", "127.0.0.1:5000". */
  readonly registry: string;
  /** "library/python", "user/app". */
  readonly repository: string;
  /** Absent when only a digest was given; "latest" when neither was. */
  readonly tag?: string;
  /** "sha256:<64 hex>" when the reference pins one. */
  readonly digest?: string;
  /** "registry/repository[:tag][@digest]". */
  toString(): string;
}

export const DEFAULT_REGISTRY = "docker.io";

// The grammar of github.com/distribution/reference, less IPv6 literals.
const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const DOMAIN = new RegExp(`^${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*(?::[0-9]+)?$`);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const NAME_MAX = 255;

/** True for "sha256:<64 lowercase hex>" or "sha512:<128 lowercase hex>". */
export function isDigest(value: unknown): value is string {
  return typeof value === "string" && DIGEST.test(value);
}

/** Parses and normalises an image reference; throws InvalidArgumentError naming the value and the rule it broke. */
export function parseReference(ref: string): ImageReference {
  const bad = (why: string) => new InvalidArgumentError(`image reference ${JSON.stringify(ref)} is invalid: ${why}`);
  if (typeof ref !== "string" || ref.trim() === "") throw bad("it is empty");
  if (ref !== ref.trim()) throw bad("it has leading or trailing whitespace");

  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) {
      throw bad(`digest ${JSON.stringify(digest)} is not sha256:<64 lowercase hex> (or sha512:<128 hex>)`);
    }
  }

  // A tag is whatever follows the last ':' after the last '/', so "host:5000/repo" keeps its port.
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`tag ${JSON.stringify(tag)} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'`);
  }

  let registry = DEFAULT_REGISTRY;
  let repository = rest;
  const slash = rest.indexOf("/");
  if (slash !== -1) {
    const first = rest.slice(0, slash);
    if (first.includes(".") || first.includes(":") || first === "localhost") {
      registry = first;
      repository = rest.slice(slash + 1);
      if (!DOMAIN.test(registry)) throw bad(`registry ${JSON.stringify(registry)} is not a host name with an optional :port`);
    }
  }
  if (registry === "index.docker.io" || registry === "registry-1.docker.io") registry = DEFAULT_REGISTRY;
  if (repository === "") throw bad("the repository name is empty");
  if (registry === DEFAULT_REGISTRY && !repository.includes("/")) repository = `library/${repository}`;

  for (const component of repository.split("/")) {
    if (!PATH_COMPONENT.test(component)) {
      const why = component !== component.toLowerCase() ? "must be lowercase" : "must be lowercase letters and digits separated by '.', '_', '__' or '-'";
      throw bad(`repository component ${JSON.stringify(component)} ${why}`);
    }
  }
  if (registry.length + 1 + repository.length > NAME_MAX) throw bad(`the name is longer than ${NAME_MAX} characters`);

  if (tag === undefined && digest === undefined) tag = "latest";
  return makeReference(registry, repository, tag, digest);
}

/** The same repository pinned to `digest` (the tag is kept for display). */
export function withDigest(ref: ImageReference, digest: string): ImageReference {
  return makeReference(ref.registry, ref.repository, ref.tag, digest);
}

/** The host to talk to for a registry name: Docker Hub's API lives on registry-1.docker.io. */
export function registryHost(registry: string): string {
  return registry === DEFAULT_REGISTRY ? "registry-1.docker.io" : registry;
}

function makeReference(registry: string, repository: string, tag: string | undefined, digest: string | undefined): ImageReference {
  const text = `${registry}/${repository}${tag !== undefined ? `:${tag}` : ""}${digest !== undefined ? `@${digest}` : ""}`;
  const ref: ImageReference = { registry, repository, toString: () => text };
  if (tag !== undefined) (ref as { tag?: string }).tag = tag;
  if (digest !== undefined) (ref as { digest?: string }).digest = digest;
  return Object.freeze(ref);
}
