// The server's table from what clients ask for to an image and a kind of sandbox: built-in names,
// the options' entries (bare strings and { image, kind }), the fallbacks, and bad entries refused
// with the value named. Nothing here boots a VM.
import { describe, expect, it } from "vitest";

import { createServer, InvalidArgumentError } from "../../src/index.js";
import { ImageCatalog } from "../../src/server/catalog.js";
import type { Managed } from "../../src/server/sandboxes.js";

describe("ImageCatalog", () => {
  it("knows the built-in names with their kinds, and takes any other name as a CustomSandbox's image", () => {
    const c = new ImageCatalog({});
    expect(c.image("microsandbox/python")).toEqual({ image: "local:python", kind: "PythonSandbox" });
    expect(c.image("microsandbox/node")).toEqual({ image: "local:node", kind: "NodeSandbox" });
    expect(c.template("base")).toEqual({ image: "local:python", kind: "PythonSandbox" });
    expect(c.template("code-interpreter-v1")).toEqual({ image: "local:python", kind: "PythonSandbox" });
    // No guessing from the image's name: python:3.12-slim asked for by name is no PythonSandbox.
    expect(c.image("python:3.12-slim")).toEqual({ image: "python:3.12-slim", kind: "CustomSandbox" });
    // A template id in no table is looked up among the image names, then taken as an image.
    expect(c.template("microsandbox/node")).toEqual({ image: "local:node", kind: "NodeSandbox" });
    expect(c.template("local:busybox")).toEqual({ image: "local:busybox", kind: "CustomSandbox" });
  });

  it("takes the options' entries: a bare string keeps a built-in name's kind, else is a CustomSandbox", () => {
    const c = new ImageCatalog({
      images: { "microsandbox/python": "python:3.12-slim", tools: "debian:12", js: { image: "node:22-slim", kind: "NodeSandbox" } },
      templates: { base: "local:python3", mine: "local:python", "mine-py": { image: "local:python", kind: "PythonSandbox" } },
    });
    expect(c.image("microsandbox/python")).toEqual({ image: "python:3.12-slim", kind: "PythonSandbox" });
    expect(c.image("tools")).toEqual({ image: "debian:12", kind: "CustomSandbox" });
    expect(c.image("js")).toEqual({ image: "node:22-slim", kind: "NodeSandbox" });
    expect(c.template("base")).toEqual({ image: "local:python3", kind: "PythonSandbox" });
    expect(c.template("mine")).toEqual({ image: "local:python", kind: "CustomSandbox" });
    expect(c.template("mine-py")).toEqual({ image: "local:python", kind: "PythonSandbox" });
  });

  it("refuses a bad entry, naming it", () => {
    expect(() => new ImageCatalog({ images: { x: { image: "local:python", kind: "Python" as "PythonSandbox" } } })).toThrow(
      /images\["x"\]\.kind "Python" is invalid.*PythonSandbox, NodeSandbox, CustomSandbox/,
    );
    expect(() => new ImageCatalog({ templates: { x: { image: "local:python", kind: "PythonSandbx" as "PythonSandbox" } } })).toThrow(
      /did you mean "PythonSandbox"/,
    );
    expect(() => new ImageCatalog({ templates: { x: { imgae: "local:python", kind: "PythonSandbox" } as never } })).toThrow(/"imgae": did you mean "image"/);
    expect(() => new ImageCatalog({ images: { x: "" } })).toThrow(InvalidArgumentError);
  });

  it("gives a sandbox's interpreter only when its kind has one for the language", () => {
    const c = new ImageCatalog({});
    const sandbox = {} as Managed["sandbox"];
    const py = { name: "py", kind: "PythonSandbox", template: "base", sandbox } as Managed;
    const custom = { name: "box", kind: "CustomSandbox", template: "local:busybox", sandbox } as Managed;
    expect(c.interpreterOf(py, "python")).toBe(sandbox);
    expect(() => c.interpreterOf(py, "nodejs")).toThrow(/is a PythonSandbox .* no nodejs interpreter.*kind is NodeSandbox \(microsandbox\/node\)/);
    expect(() => c.interpreterOf(custom, "python")).toThrow(
      /is a CustomSandbox \(from "local:busybox"\).*\(microsandbox\/python, template base, template code-interpreter-v1\)/,
    );
    expect(() => c.interpreterOf(py, "cobol")).toThrow(/language "cobol" has no interpreter here: use python, javascript, nodejs/);
  });

  it("is checked when the server is created", async () => {
    await expect(createServer({ port: 0, e2b: { templates: { bad: { image: "local:python", kind: "Custom" as "CustomSandbox" } } } })).rejects.toThrow(
      /e2b\.templates\["bad"\]\.kind/,
    );
  });
});
