// The Node REPL driver's reading of a cell (see node_driver.js): a small tokenizer that finds where
// statements start, and the rewrite of a cell that uses top-level await into an async function
// whose top-level declarations persist and which returns the value of its last expression.
//
// Plain functions, no module: driverSource (src/sandbox/repl.ts) ships this file and the driver as
// one script, this one first.

const REGEX_AFTER_WORD = new Set(["return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do", "else", "yield", "await"]);

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
  "var",
  "let",
  "const",
  "function",
  "class",
  "if",
  "for",
  "while",
  "do",
  "try",
  "switch",
  "return",
  "throw",
  "import",
  "export",
]);

// Builds the async wrapper for a top-level await cell, or null if the rewrite does not compile;
// `compiles(code)` says whether V8 accepts a script.
// biome-ignore lint/correctness/noUnusedVariables: called by node_driver.js, which is shipped to the guest concatenated after this file
function buildAsyncCell(code, compiles) {
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
  const body = split < 0 ? `${prologue}${prefix}\n` : `${prologue}${prefix};return (${code.slice(split, suffixEnd)}\n)`;
  // Everything stays on the user's lines, so line numbers in stacks still match the cell.
  const wrapped = `(async () => {${body}})()`;
  if (!compiles(wrapped)) return null;
  return { wrapped, names };
}
