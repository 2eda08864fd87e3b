// Dockerfile words: quotes, the escape character and $VAR / ${VAR} / ${VAR:-word} / ${VAR:+word}
// substitution from the environment so far, as Docker applies them to ENV, WORKDIR, USER and
// COPY. Single quotes keep everything literal; double quotes keep spaces but substitute.

export class WordError extends Error {}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*/;

// The value of the substitution starting at text[i] ("$"), and where it ends.
function substitution(text: string, i: number, env: Record<string, string>, escapeChar: string): { value: string; end: number } {
  if (text[i + 1] === "{") {
    const close = text.indexOf("}", i + 2);
    if (close < 0) throw new WordError(`missing "}" in ${JSON.stringify(text.slice(i))}`);
    const inner = text.slice(i + 2, close);
    const name = NAME.exec(inner)?.[0];
    if (!name) throw new WordError(`bad substitution \${${inner}}`);
    const rest = inner.slice(name.length);
    const v = env[name];
    if (rest === "") return { value: v ?? "", end: close + 1 };
    const word = words(rest.slice(2), env, escapeChar, false).join(" ");
    if (rest.startsWith(":-")) return { value: v ? v : word, end: close + 1 };
    if (rest.startsWith(":+")) return { value: v ? word : "", end: close + 1 };
    throw new WordError(`bad substitution \${${inner}}: only \${NAME}, \${NAME:-word} and \${NAME:+word} are supported`);
  }
  const name = NAME.exec(text.slice(i + 1))?.[0];
  if (!name) return { value: "$", end: i + 1 };
  return { value: env[name] ?? "", end: i + 1 + name.length };
}

/**
 * Splits `text` into words (or, with split false, one word with its spaces kept), removing quotes
 * and escapes and substituting variables.
 */
export function words(text: string, env: Record<string, string>, escapeChar = "\\", split = true): string[] {
  const out: string[] = [];
  let word = "";
  let inWord = false;
  let quote: "'" | '"' | undefined;
  for (let i = 0; i < text.length; ) {
    const c = text[i]!;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else word += c;
      i++;
    } else if (c === escapeChar && i + 1 < text.length && (quote === undefined || ['"', escapeChar, "$"].includes(text[i + 1]!))) {
      word += text[i + 1];
      inWord = true;
      i += 2;
    } else if (c === "$") {
      const s = substitution(text, i, env, escapeChar);
      word += s.value;
      inWord = true;
      i = s.end;
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else word += c;
      i++;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
      i++;
    } else if (split && /\s/.test(c)) {
      if (inWord) out.push(word);
      word = "";
      inWord = false;
      i++;
    } else {
      word += c;
      inWord = true;
      i++;
    }
  }
  if (quote) throw new WordError(`unmatched ${quote} in ${JSON.stringify(text)}`);
  if (inWord || !split) out.push(word);
  return out;
}
