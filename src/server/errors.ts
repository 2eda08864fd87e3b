// How a failure reaches a client, whichever protocol it came by: one table from an error's stable
// code (MicrosandboxError.code) to the HTTP status, the JSON-RPC error code and the Connect code it
// is answered with. The server's own failures (a full server, a missing sandbox, a wrong token)
// are errors with codes of their own, in the same table. Anything else is a 500.
import { Code, ConnectError } from "@connectrpc/connect";

import { FileOperationError, MicrosandboxError, RegistryError } from "../errors.js";
import { SERVER_DEFAULTS } from "./defaults.js";

/** No API key, or not a valid one. */
export class UnauthorizedError extends MicrosandboxError {
  override readonly code = "MSB_UNAUTHORIZED";
}

/** A presigned URL whose signature is wrong or has expired. */
export class ForbiddenError extends MicrosandboxError {
  override readonly code = "MSB_FORBIDDEN";
}

/** No such sandbox (for this key), context, process or endpoint. */
export class NotFoundError extends MicrosandboxError {
  override readonly code = "MSB_NOT_FOUND";
}

/** The sandbox is not in a state that allows the call (paused, already paused). */
export class ConflictError extends MicrosandboxError {
  override readonly code = "MSB_CONFLICT";
}

/** A request body over the server's limit. */
export class BodyTooLargeError extends MicrosandboxError {
  override readonly code = "MSB_BODY_TOO_LARGE";
}

/** The server runs as many sandboxes, or as much memory, as it may: retry later. */
export class ServerFullError extends MicrosandboxError {
  override readonly code = "MSB_SERVER_FULL";
}

/** The server is shutting down and starts nothing more. */
export class ServerClosingError extends MicrosandboxError {
  override readonly code = "MSB_SERVER_CLOSING";
}

/** getHost's relay reached nothing: no running sandbox by that id, or nothing listening on the port. */
export class PortUnreachableError extends MicrosandboxError {
  override readonly code = "MSB_PORT_UNREACHABLE";
}

/**
 * The Microsandbox protocol's error codes: JSON-RPC's own, and -32001 unauthorized, -32004 not
 * found, -32005 the server cannot take it now (full, shutting down, unable to boot), -32010 the
 * sandbox failed the call (timeout, memory, a program it could not run, its agent).
 */
export const RPC_ERRORS = {
  parse: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internal: -32603,
  unauthorized: -32001,
  notFound: -32004,
  full: -32005,
  sandbox: -32010,
} as const;

/** How one kind of failure is answered in each protocol. */
export interface Answer {
  status: number;
  rpc: number;
  connect: Code;
  /** Seconds the client should wait before it retries (Retry-After). */
  retryAfterS?: number;
}

const R = RPC_ERRORS;
const row = (status: number, rpc: number, connect: Code, retryAfterS?: number): Answer => ({
  status,
  rpc,
  connect,
  ...(retryAfterS !== undefined ? { retryAfterS } : {}),
});
const BAD_REQUEST = row(400, R.invalidParams, Code.InvalidArgument);
const NOT_FOUND = row(404, R.notFound, Code.NotFound);
const INTERNAL = row(500, R.internal, Code.Internal);

const BY_CODE: Readonly<Record<string, Answer>> = {
  // What the client asked for is wrong or missing.
  MSB_INVALID_ARGUMENT: BAD_REQUEST,
  MSB_DOCKERFILE: BAD_REQUEST,
  MSB_UNAUTHORIZED: row(401, R.unauthorized, Code.Unauthenticated),
  MSB_FORBIDDEN: row(403, R.unauthorized, Code.PermissionDenied),
  MSB_NOT_FOUND: NOT_FOUND,
  MSB_PAUSED_NOT_FOUND: NOT_FOUND,
  MSB_IMAGE: NOT_FOUND, // not in the store, or not built (local:)
  MSB_PLATFORM_NOT_FOUND: NOT_FOUND,
  MSB_CONFLICT: row(409, R.sandbox, Code.FailedPrecondition),
  MSB_SANDBOX_NOT_RUNNING: row(409, R.sandbox, Code.FailedPrecondition),
  MSB_SANDBOX_EXPIRED: row(409, R.sandbox, Code.FailedPrecondition),
  MSB_VOLUME_BUSY: row(409, R.sandbox, Code.FailedPrecondition),
  MSB_BODY_TOO_LARGE: row(413, R.invalidRequest, Code.ResourceExhausted),
  // The sandbox could not do what was asked: run the program, within its memory and output limits,
  // without its interpreter dying.
  MSB_EXEC_FAILED: row(422, R.sandbox, Code.FailedPrecondition),
  MSB_RESOURCE: row(422, R.sandbox, Code.ResourceExhausted),
  MSB_OUTPUT_LIMIT: row(422, R.sandbox, Code.ResourceExhausted),
  MSB_EXECUTION: row(422, R.sandbox, Code.Aborted),
  MSB_BUILD: row(422, R.sandbox, Code.FailedPrecondition),
  MSB_TIMEOUT: row(504, R.sandbox, Code.DeadlineExceeded),
  // Something behind the server failed: the registry, the image it served, the sandbox's agent.
  MSB_REGISTRY: row(502, R.internal, Code.Unavailable),
  MSB_DIGEST_MISMATCH: row(502, R.internal, Code.Unavailable),
  MSB_LAYER: row(502, R.internal, Code.Unavailable),
  MSB_LAYER_FORMAT: row(502, R.internal, Code.Unavailable),
  MSB_TAR: row(502, R.internal, Code.Unavailable),
  MSB_AGENT_CONNECTION: row(502, R.sandbox, Code.Unavailable),
  MSB_AGENT_PROTOCOL: row(502, R.sandbox, Code.Unavailable),
  MSB_AGENT_ERROR: row(502, R.sandbox, Code.Internal),
  MSB_PORT_UNREACHABLE: row(502, R.sandbox, Code.Unavailable),
  // The server cannot take it now.
  MSB_SERVER_FULL: row(429, R.full, Code.ResourceExhausted, SERVER_DEFAULTS.retryAfterS),
  MSB_SERVER_CLOSING: row(503, R.full, Code.Unavailable),
  MSB_LOCK_TIMEOUT: row(503, R.full, Code.Unavailable),
  MSB_BACKEND_UNAVAILABLE: row(503, R.full, Code.Unavailable),
  MSB_GUEST_KERNEL: row(503, R.full, Code.Unavailable),
  MSB_AGENT_BINARY: row(503, R.full, Code.Unavailable),
  // This host's VMM cannot pause or resume (libkrun has no snapshots).
  MSB_SNAPSHOT_UNSUPPORTED: row(501, R.internal, Code.Unimplemented),
  // Everything else, such as a VM that failed to boot, is the server's own failure: INTERNAL.
};

// A guest file operation's failure, by its errno.
const BY_ERRNO: Readonly<Record<string, Answer>> = {
  ENOENT: NOT_FOUND,
  EEXIST: row(409, R.sandbox, Code.AlreadyExists),
  ENOTEMPTY: row(409, R.sandbox, Code.FailedPrecondition),
  EACCES: row(403, R.sandbox, Code.PermissionDenied),
  EPERM: row(403, R.sandbox, Code.PermissionDenied),
  EROFS: row(403, R.sandbox, Code.PermissionDenied),
  EISDIR: BAD_REQUEST,
  ENOTDIR: BAD_REQUEST,
  EINVAL: BAD_REQUEST,
  ENAMETOOLONG: BAD_REQUEST,
  ELOOP: BAD_REQUEST,
  ENOSPC: row(507, R.sandbox, Code.ResourceExhausted),
  EDQUOT: row(507, R.sandbox, Code.ResourceExhausted),
};

/** How `err` is answered. */
export function answerOf(err: unknown): Answer {
  if (err instanceof FileOperationError) return BY_ERRNO[err.errnoName] ?? INTERNAL;
  // The registry refusing a name is the image not existing, or not for this server to pull.
  if (err instanceof RegistryError && (err.status === 401 || err.status === 403 || err.status === 404)) return NOT_FOUND;
  return (err instanceof MicrosandboxError && BY_CODE[err.code]) || INTERNAL;
}

/** The headers an answer adds: Retry-After when the client should come back later. */
export const answerHeaders = (a: Answer): Record<string, string> => (a.retryAfterS ? { "retry-after": String(a.retryAfterS) } : {});

export const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** `err` as the Connect error envd answers with. */
export function connectErrorOf(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  return new ConnectError(messageOf(err), answerOf(err).connect, undefined, undefined, err);
}
