// In-guest Node.js REPL driver: runs cells from the host in one persistent vm context (see src/sandbox/repl-frames.ts).
//
// Shipped as one script: a prelude that defines FRAME_READY, FRAME_END and MAX_TEXT_CHARS (the
// host's constants), node_cell.js, then this file (driverSource in src/sandbox/repl.ts). Node 18+
// (Debian 12's nodejs).
//
// Cells come in and control frames go out on the channel the agent gave this process (fd 3, named
// by MSB_CHANNEL_FD). fd 1 and 2 are the user's: console, process.stdout, fs.writeSync(1, ...) and
// children with stdio "inherit" all reach the host as this process's own output, and nothing
// written there can break the conversation. stdin is /dev/null. Limits, all documented here once:
//
// * Children of cells inherit fd 3 (Node cannot mark it close-on-exec); they have no use for it.
// * Plain cells run as scripts in the context, so `var`, `let`, `const`, `function` and `class`
//   all persist across cells (top-level lexical bindings share the context's global scope).
//   Redeclaring a `let`/`const`/`class` name in a later cell is a SyntaxError, as in a script.
// * Cells that use top-level `await` run inside an async function, so declarations are rewritten
//   to persist: `var/let/const x = ...` become assignments to globals (const-ness is lost),
//   `function f` is also copied to the global, `class C` becomes `C = class C`. Destructuring
//   declarations (`const {a} = await f()`) stay local to the cell. The value of the last
//   expression is echoed; finding it uses a small tokenizer (node_cell.js), so exotic code may
//   just not echo.

// Everything runs inside an async function that loads Node's modules with import(): that works
// whether this file is loaded as CommonJS or as ESM (a "type": "module" package.json above it in
// the image), where require() does not exist.
(async function driver() {
  const fs = await import("node:fs");
  const net = await import("node:net");
  const path = await import("node:path");
  const util = await import("node:util");
  const vm = await import("node:vm");
  const { Writable } = await import("node:stream");
  const { Console } = await import("node:console");
  const { createRequire } = await import("node:module");
  const { pathToFileURL } = await import("node:url");
  const driverFile = path.resolve(process.argv[1] || "node_driver.js");
  const driverUrl = pathToFileURL(driverFile).href;

  // --- the channel -------------------------------------------------------------------------------

  // Out of the environment, so user code and its children do not come across it.
  const channel = new net.Socket({ fd: Number(process.env.MSB_CHANNEL_FD), readable: true, writable: true });
  delete process.env.MSB_CHANNEL_FD;

  function sendJson(type, obj) {
    // JSON.stringify leaves lone surrogates escaped (well-formed JSON.stringify, V8 >= 7.2).
    const payload = Buffer.from(JSON.stringify(obj), "utf8");
    const head = Buffer.allocUnsafe(5);
    head.writeUInt8(type, 0);
    head.writeUInt32BE(payload.length, 1);
    channel.write(Buffer.concat([head, payload]));
  }

  // --- stdio --------------------------------------------------------------------------------------

  // process.stdout and stderr write synchronously to fd 1 and 2. Node's own make a pipe
  // non-blocking (for children that inherit it too) and queue what it does not take at once, behind
  // which an end frame or an fs.writeSync(1, ...) would overtake; a synchronous write is in the pipe
  // when it returns.
  const sleepCell = new Int32Array(new SharedArrayBuffer(4));

  function writeAll(fd, buf) {
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(fd, buf, off, buf.length - off);
      } catch (err) {
        // Someone made the pipe non-blocking after all: wait for the host to read.
        if (err && err.code === "EAGAIN") Atomics.wait(sleepCell, 0, 0, 1);
        else throw err;
      }
    }
  }

  function toBuffer(chunk, encoding) {
    if (typeof chunk === "string") return Buffer.from(chunk, Buffer.isEncoding(encoding) ? encoding : "utf8");
    // ArrayBuffer.isView, not instanceof: chunks made in the context come from another realm.
    if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    throw new TypeError('The "chunk" argument must be of type string or an instance of Buffer or Uint8Array');
  }

  function syncStream(fd) {
    const stream = new Writable({
      write(chunk, _encoding, cb) {
        writeAll(fd, chunk);
        cb();
      },
    });
    // Immune to end()/cork(): every write is in the pipe before write() returns.
    stream.write = function write(chunk, encoding, cb) {
      if (typeof encoding === "function") {
        cb = encoding;
        encoding = undefined;
      }
      const buf = toBuffer(chunk, encoding);
      if (buf.length > 0) writeAll(fd, buf);
      if (typeof cb === "function") process.nextTick(cb);
      return true;
    };
    stream.end = function end(chunk, encoding, cb) {
      if (typeof chunk === "function") cb = chunk;
      else if (chunk != null) stream.write(chunk, encoding);
      if (typeof encoding === "function") cb = encoding;
      if (typeof cb === "function") process.nextTick(cb);
      return stream;
    };
    stream.fd = fd;
    stream.isTTY = false;
    stream._isStdio = true; // pipe() must not end() it
    return stream;
  }

  const stdout = syncStream(1);
  const stderr = syncStream(2);
  Object.defineProperty(process, "stdout", { configurable: true, enumerable: true, get: () => stdout });
  Object.defineProperty(process, "stderr", { configurable: true, enumerable: true, get: () => stderr });

  // The main realm's console binds process.stdout lazily, so modules required from cells use these
  // streams too; the context gets its own console on them.
  const userConsole = new Console({ stdout, stderr });
  globalThis.console = userConsole;

  const realExit = process.exit.bind(process);
  process.exit = function exit(code) {
    // Like Python's SystemExit at the prompt: reported as a failed cell, the driver lives on.
    const err = new Error(`process.exit(${code === undefined ? "" : code}) called`);
    err.name = "ProcessExit";
    err.exitCode = code;
    throw err;
  };

  // --- the context --------------------------------------------------------------------------------

  const userRequire = createRequire(path.join(process.cwd(), "<repl>"));
  const sandbox = {
    console: userConsole,
    process,
    require: userRequire,
    Buffer,
    setTimeout,
    clearTimeout,
    setInterval,
    clearInterval,
    setImmediate,
    clearImmediate,
    queueMicrotask,
    structuredClone,
    URL,
    URLSearchParams,
    TextEncoder,
    TextDecoder,
    AbortController,
    AbortSignal,
    Event,
    EventTarget,
    atob,
    btoa,
    performance,
  };
  if (typeof fetch === "function") Object.assign(sandbox, { fetch, Headers, Request, Response });
  const context = vm.createContext(sandbox, { name: "repl" });
  vm.runInContext("globalThis.global = globalThis;", context);

  // --- running cells ------------------------------------------------------------------------------

  function compiles(code) {
    try {
      new vm.Script(code);
      return true;
    } catch {
      return false;
    }
  }

  let interruptCell = null;
  process.on("SIGINT", () => {
    // Between cells SIGINT is ignored; while awaiting it abandons the cell. Synchronous code is
    // interrupted by vm's breakOnSigint.
    if (interruptCell) interruptCell();
  });

  // displayErrors: false keeps V8 from prefixing runtime errors' stacks with a source excerpt, which
  // for errors raised by the driver's hooks (process.exit, process.stdin) would show driver code.
  // Compile errors still get the excerpt with the caret under the user's mistake.
  const RUN_OPTIONS = { breakOnSigint: true, displayErrors: false };

  function runScript(code, filename) {
    return new vm.Script(code, { filename }).runInContext(context, RUN_OPTIONS);
  }

  async function evaluate(code, filename) {
    // Like the Node REPL: `{ a: 1 }` alone is an object literal, not a block.
    if (/^\s*\{/.test(code) && /\}\s*;?\s*$/.test(code) && compiles(`(${code.replace(/;\s*$/, "")}\n)`)) {
      return runScript(`(${code.replace(/;\s*$/, "")}\n)`, filename);
    }
    let script;
    try {
      script = new vm.Script(code, { filename });
    } catch (err) {
      if (!/\bawait\b/.test(code)) throw err;
      const cell = buildAsyncCell(code, compiles);
      if (!cell) throw err;
      if (cell.names.length > 0) {
        // Assignments to undeclared names make globals (sloppy mode), but `let x;` alone would read
        // an undeclared x: make each name exist first.
        const declare = cell.names.map((x) => `try { ${x}; } catch (e) { globalThis[${JSON.stringify(x)}] = undefined; }`);
        vm.runInContext(declare.join("\n"), context);
      }
      const promise = runScript(cell.wrapped, filename);
      return await new Promise((resolve, reject) => {
        interruptCell = () => {
          const e = new Error("Cell interrupted by SIGINT while awaiting");
          e.name = "KeyboardInterrupt";
          reject(e);
        };
        Promise.resolve(promise).then(resolve, reject);
      }).finally(() => {
        interruptCell = null;
      });
    }
    return script.runInContext(context, RUN_OPTIONS);
  }

  function formatError(err) {
    if (err !== null && typeof err === "object" && typeof err.stack === "string") {
      // Drop the frames of vm and this driver, and whatever called into the cell, like the Node
      // REPL does: the user sees their own frames (and those of modules they called).
      const isFrame = (l) => /^\s+at /.test(l);
      let lines = err.stack.split("\n").filter((l) => !(isFrame(l) && (/[( ]node:/.test(l) || l.includes(driverFile) || l.includes(driverUrl))));
      let lastCell = -1;
      lines.forEach((l, k) => {
        if (isFrame(l) && l.includes("<cell-")) lastCell = k;
      });
      if (lastCell >= 0) lines = lines.filter((l, k) => k <= lastCell || !isFrame(l));
      return lines.join("\n");
    }
    return `Uncaught ${util.inspect(err)}`;
  }

  function describeError(err) {
    if (err !== null && typeof err === "object" && typeof err.message === "string") {
      const ename = typeof err.name === "string" && err.name ? err.name : "Error";
      return { ename: ename.slice(0, MAX_TEXT_CHARS), evalue: err.message.slice(0, MAX_TEXT_CHARS) };
    }
    // `throw 42`: not an Error, so there is no name to report.
    return { ename: "Uncaught", evalue: util.inspect(err).slice(0, MAX_TEXT_CHARS) };
  }

  let cellCount = 0;

  async function runCell(code) {
    cellCount++;
    const filename = `<cell-${cellCount}>`;
    let end;
    try {
      const value = await evaluate(code, filename);
      end = { status: "ok" };
      if (value !== undefined) {
        // Echoed like the prompt does, and sent on its own as the cell's result.
        const shown = util.inspect(value);
        stdout.write(`${shown}\n`);
        end.result = shown.slice(0, MAX_TEXT_CHARS);
      }
    } catch (err) {
      try {
        stderr.write(`${formatError(err)}\n`);
        end = { status: "error", ...describeError(err) };
      } catch {
        end = { status: "error", ename: "Error", evalue: "(the thrown value could not be inspected)" };
      }
    }
    sendJson(FRAME_END, end);
  }

  function reportUncaught(err) {
    // Errors from timers or promises that outlive their cell: print them, keep the driver alive.
    try {
      stderr.write(`Uncaught ${formatError(err)}\n`);
    } catch {
      // nothing sensible left to do
    }
  }
  process.on("uncaughtException", reportUncaught);
  process.on("unhandledRejection", reportUncaught);

  // --- the cell loop ------------------------------------------------------------------------------

  let pending = Buffer.alloc(0);
  const queue = [];
  let running = false;
  let inputEnded = false;

  function drainQueue() {
    if (running) return;
    const code = queue.shift();
    if (code === undefined) {
      if (inputEnded) realExit(0);
      return;
    }
    running = true;
    runCell(code)
      .catch((err) => {
        fs.writeSync(2, `repl driver: ${err?.stack}\n`);
        realExit(70);
      })
      .then(() => {
        running = false;
        drainQueue();
      });
  }

  channel.on("data", (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 4) {
      const len = pending.readUInt32BE(0);
      if (pending.length < 4 + len) break;
      queue.push(pending.subarray(4, 4 + len).toString("utf8"));
      pending = pending.subarray(4 + len);
    }
    drainQueue();
  });
  channel.on("end", () => {
    inputEnded = true;
    drainQueue();
  });

  sendJson(FRAME_READY, { language: "javascript", version: process.versions.node });
})().catch((err) => {
  // A crash of the driver itself.
  process.stderr.write(`repl driver: ${err?.stack || err}\n`);
  process.exitCode = 70;
});
