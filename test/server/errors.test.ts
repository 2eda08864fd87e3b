// The server's one table from an error to its answer in each protocol: a few representative
// rows, the refinements by errno and registry status, and the fallback for anything unknown.
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";

import { FileOperationError, ImageError, InvalidArgumentError, RegistryError, TimeoutError } from "../../src/errors.js";
import { SERVER_DEFAULTS } from "../../src/server/defaults.js";
import { answerOf, connectErrorOf, NotFoundError, RPC_ERRORS, ServerFullError } from "../../src/server/errors.js";

describe("the server's error table", () => {
  it("answers each kind of failure the same way in every protocol", () => {
    expect(answerOf(new InvalidArgumentError("bad"))).toEqual({ status: 400, rpc: RPC_ERRORS.invalidParams, connect: Code.InvalidArgument });
    expect(answerOf(new NotFoundError("no sandbox"))).toEqual({ status: 404, rpc: RPC_ERRORS.notFound, connect: Code.NotFound });
    expect(answerOf(new ImageError("no image"))).toMatchObject({ status: 404, rpc: RPC_ERRORS.notFound });
    expect(answerOf(new TimeoutError("slow"))).toEqual({ status: 504, rpc: RPC_ERRORS.sandbox, connect: Code.DeadlineExceeded });
    expect(answerOf(new ServerFullError("full"))).toEqual({
      status: 429,
      rpc: RPC_ERRORS.full,
      connect: Code.ResourceExhausted,
      retryAfterS: SERVER_DEFAULTS.retryAfterS,
    });
  });

  it("tells an image the registry does not have from a registry that failed", () => {
    expect(answerOf(new RegistryError("manifest not found", 404)).status).toBe(404);
    expect(answerOf(new RegistryError("401 from docker.io: log in", 401)).status).toBe(404);
    expect(answerOf(new RegistryError("could not speak HTTPS")).status).toBe(502);
    expect(answerOf(new RegistryError("500 from the registry", 500)).status).toBe(502);
  });

  it("answers a guest file failure by its errno", () => {
    expect(answerOf(new FileOperationError("gone", 2, "ENOENT"))).toMatchObject({ status: 404, connect: Code.NotFound });
    expect(answerOf(new FileOperationError("there", 17, "EEXIST"))).toMatchObject({ status: 409, connect: Code.AlreadyExists });
    expect(answerOf(new FileOperationError("denied", 13, "EACCES"))).toMatchObject({ status: 403, connect: Code.PermissionDenied });
    expect(answerOf(new FileOperationError("broken", 5, "EIO"))).toMatchObject({ status: 500, connect: Code.Internal });
  });

  it("answers anything it does not know with 500, keeping the message", () => {
    expect(answerOf(new Error("a bug"))).toEqual({ status: 500, rpc: RPC_ERRORS.internal, connect: Code.Internal });
    expect(answerOf("a string")).toMatchObject({ status: 500 });
    const e = connectErrorOf(new InvalidArgumentError("depth -1 is invalid"));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toBe("depth -1 is invalid");
  });
});
