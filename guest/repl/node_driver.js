// In-guest Node.js REPL driver: runs cells from the host in one persistent vm context (see src/sandbox/repl-frames.ts).
//
// Shipped as one script behind a prelude that defines FRAME_READY, FRAME_END and MAX_TEXT_CHARS
// (the host's constants; driverSource in src/sandbox/repl.ts). Node 18+ (Debian 12's nodejs).
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
//   expression is echoed; finding it uses a small tokenizer, so exotic code may just not echo.

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

// --- a small tokenizer, only for top-level await cells ------------------------------------------

const REGEX_AFTER_WORD = new Set([
  "return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do", "else",
  "yield", "await",
]);

// Returns tokens {start, end, kind, value, depth, nl}; depth = open brackets before the token,
// nl = a line break precedes it. Template literals are one token; their ${} parts are skipped.
function tokenize(src) {
  const tokens = [];
  const stack = [];
  let i = 0;
  let nl = false;
  const n = src.length;
  const isIdStart = (c) => /[A-Za-z_$\u0080-\uffff]/.test(c);
  const isId = (c) => /[\w$\u0080-\uffff]/.test(c);

  function regexAllowed() {
    const prev = tokens[tokens.length - 1];
    if (!prev) return true;
    if (prev.kind === "word") return REGEX_AFTER_WORD.has(prev.value);
    if (prev.kind === "punct") return !/^[)\]}]$/.test(prev.value);
    return false;
  }
  function skipString(q) {
    i++;
    while (i < n && src[i] !== q) {
      if (src[i] === "\\") i++;
      else if (src[i] === "\n") break;
      i++;
    }
    i++;
  }
  function skipTemplate() {
    i++;
    while (i < n && src[i] !== "`") {
      if (src[i] === "\\") i += 2;
      else if (src[i] === "$" && src[i + 1] === "{") {
        i += 2;
        skipExpressionUntilBrace();
      } else i++;
    }
    i++;
  }
  function skipExpressionUntilBrace() {
    // Inside ${ }: only brackets, strings, templates and comments matter for finding its end.
    let depth = 0;
    while (i < n) {
      const c = src[i];
      if (c === "'" || c === '"') skipString(c);
      else if (c === "`") skipTemplate();
      else if (c === "/" && src[i + 1] === "/") while (i < n && src[i] !== "\n") i++;
      else if (c === "/" && src[i + 1] === "*") {
        const e = src.indexOf("*/", i + 2);
        i = e < 0 ? n : e + 2;
      } else if (c === "{") {
        depth++;
        i++;
      } else if (c === "}") {
        i++;
        if (depth-- === 0) return;
      } else i++;
    }
  }

  while (i < n) {
    const c = src[i];
    if (c === "\n") {
      nl = true;
      i++;
      continue;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === "/" && src[i + 1] === "/") {
      while (i < n && src[i] !== "\n") i++;
      continue;
    }
    if (c === "/" && src[i + 1] === "*") {
      const e = src.indexOf("*/", i + 2);
      if (src.slice(i, e < 0 ? n : e).includes("\n")) nl = true;
      i = e < 0 ? n : e + 2;
      continue;
    }
    const start = i;
    const depth = stack.length;
    let kind = "punct";
    let value;
    if (c === "'" || c === '"') {
      skipString(c);
      kind = "str";
    } else if (c === "`") {
      skipTemplate();
      kind = "str";
    } else if (isIdStart(c)) {
      while (i < n && isId(src[i])) i++;
      kind = "word";
      value = src.slice(start, i);
    } else if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(src[i + 1] || ""))) {
      while (i < n && /[\w.]/.test(src[i])) i++;
      kind = "num";
    } else if (c === "/" && regexAllowed()) {
      i++;
      let inClass = false;
      while (i < n && src[i] !== "\n") {
        if (src[i] === "\\") i++;
        else if (src[i] === "[") inClass = true;
        else if (src[i] === "]") inClass = false;
        else if (src[i] === "/" && !inClass) break;
        i++;
      }
      i++;
      while (i < n && isId(src[i])) i++;
      kind = "regex";
    } else {
      i++;
      value = c;
      if (c === "(" || c === "[" || c === "{") stack.push(c);
      else if (c === ")" || c === "]" || c === "}") stack.pop();
    }
    tokens.push({ start, end: Math.min(i, n), kind, value, depth, nl });
    nl = false;
  }
  return tokens;
}

// A line break ends a statement unless the next line obviously continues it (the ASI rules).
const CONTINUES_LINE = /^(?:[([+\-*/%<>=&|^?:.,`]|in$|instanceof$)/;
const ENDS_OPEN = /^[=+\-*/%<>&|^!~?:,.([{]$/;

function statementStarts(tokens) {
  const starts = [];
  for (let k = 0; k < tokens.length; k++) {
    const t = tokens[k];
    if (t.depth !== 0) continue;
    const prev = tokens[k - 1];
    if (!prev || (prev.kind === "punct" && (prev.value === ";" || prev.value === "}"))) {
      if (!prev || prev.value === ";" || !CONTINUES_LINE.test(t.value || "")) starts.push(k);
      continue;
    }
    if (!t.nl) continue;
    if (prev.kind === "punct" && ENDS_OPEN.test(prev.value)) continue;
    if (t.kind === "punct" && CONTINUES_LINE.test(t.value)) continue;
    if (t.kind === "word" && (t.value === "in" || t.value === "instanceof")) continue;
    starts.push(k);
  }
  return starts;
}

const STATEMENT_WORDS = new Set([
  "var", "let", "const", "function", "class", "if", "for", "while", "do", "try", "switch", "return",
  "throw", "import", "export",
]);

function compiles(code) {
  try {
    new vm.Script(code);
    return true;
  } catch {
    return false;
  }
}

// Builds the async wrapper for a top-level await cell, or null if the rewrite does not compile.
function buildAsyncCell(code) {
  const tokens = tokenize(code);
  const starts = statementStarts(tokens);
  const startSet = new Set(starts);

  // The last expression statement: try statement starts from the end until V8 accepts the split.
  let split = -1;
  let suffixEnd = code.length;
  let last = tokens.length - 1;
  while (last >= 0 && tokens[last].depth === 0 && tokens[last].value === ";") last--;
  if (last >= 0) suffixEnd = tokens[last].end;
  for (let s = starts.length - 1, tries = 0; s >= 0 && tries < 32; s--, tries++) {
    const at = tokens[starts[s]].start;
    if (at >= suffixEnd) continue;
    const t = tokens[starts[s]];
    // A last statement that is a declaration or control flow has no value to echo.
    const asyncFunction = t.value === "async" && tokens[starts[s] + 1] && tokens[starts[s] + 1].value === "function";
    if (t.kind === "word" && (STATEMENT_WORDS.has(t.value) || asyncFunction)) break;
    if (compiles(`(async () => {${code.slice(0, at)};return (${code.slice(at, suffixEnd)}\n)})`)) {
      split = at;
      break;
    }
  }

  // Make top-level declarations in the prefix persistent.
  const prefixEnd = split < 0 ? code.length : split;
  const edits = []; // {pos, del, ins}, applied back to front
  const names = [];
  const functions = [];
  for (const k of starts) {
    const t = tokens[k];
    if (t.start >= prefixEnd || t.kind !== "word") continue;
    const next = tokens[k + 1];
    if ((t.value === "var" || t.value === "let" || t.value === "const") && next && next.kind === "word") {
      edits.push({ pos: t.start, del: t.value.length, ins: " ".repeat(t.value.length) });
      names.push(next.value);
      // More declarators: `let a = 1, b = 2`.
      for (let j = k + 1; j < tokens.length && !startSet.has(j); j++) {
        const u = tokens[j];
        if (u.depth === 0 && u.value === ";") break;
        if (u.depth === 0 && u.value === "," && tokens[j + 1] && tokens[j + 1].kind === "word") names.push(tokens[j + 1].value);
      }
    } else if (t.value === "function" || (t.value === "async" && next && next.value === "function")) {
      let j = t.value === "async" ? k + 2 : k + 1;
      if (tokens[j] && tokens[j].value === "*") j++;
      if (tokens[j] && tokens[j].kind === "word") functions.push(tokens[j].value);
    } else if (t.value === "class" && next && next.kind === "word") {
      let j = k + 1;
      while (j < tokens.length && !(tokens[j].depth === 0 && tokens[j].value === "{")) j++;
      let close = j + 1;
      while (close < tokens.length && !(tokens[close].depth === 1 && tokens[close].value === "}")) close++;
      if (close < tokens.length && tokens[close].end <= prefixEnd) {
        edits.push({ pos: t.start, del: 0, ins: `${next.value} = ` });
        edits.push({ pos: tokens[close].end, del: 0, ins: ";" });
      }
    }
  }
  let prefix = code.slice(0, prefixEnd);
  edits.sort((a, b) => b.pos - a.pos);
  for (const e of edits) prefix = prefix.slice(0, e.pos) + e.ins + prefix.slice(e.pos + e.del);
  const prologue = functions.map((f) => `globalThis[${JSON.stringify(f)}] = ${f};`).join("");
  const body =
    split < 0 ? `${prologue}${prefix}\n` : `${prologue}${prefix};return (${code.slice(split, suffixEnd)}\n)`;
  // Everything stays on the user's lines, so line numbers in stacks still match the cell.
  const wrapped = `(async () => {${body}})()`;
  if (!compiles(wrapped)) return null;
  return { wrapped, names };
}

// --- running cells ------------------------------------------------------------------------------

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
    const cell = buildAsyncCell(code);
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
    let lines = err.stack
      .split("\n")
      .filter((l) => !(isFrame(l) && (/[( ]node:/.test(l) || l.includes(driverFile) || l.includes(driverUrl))));
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
    if (value !== undefined) stdout.write(util.inspect(value) + "\n");
    end = { status: "ok" };
  } catch (err) {
    try {
      stderr.write(formatError(err) + "\n");
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
      fs.writeSync(2, `repl driver: ${err && err.stack}\n`);
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
  process.stderr.write(`repl driver: ${(err && err.stack) || err}\n`);
  process.exitCode = 70;
});
