// A small ES module for scripts/lib_agent.mjs: word statistics of a text.
// Imported with `import * as textstats from "textstats"` from the --lib folders
// (polyspell run scripts/lib_agent.mjs --lib scripts/lib): the host reads it, and its
// frames name textstats.mjs and its lines.
import { words } from "./words.mjs";

// How often each word occurs, and the most frequent one.
export function frequencies(text) {
  const counts = new Map();
  let top = null;
  for (const word of words(text)) {
    counts.set(word, (counts.get(word) ?? 0) + 1);
    if (top === null || counts.get(word) > counts.get(top)) top = word;
  }
  return { counts, top };
}

// The average word length, to one decimal.
export function averageLength(text) {
  const list = words(text);
  const total = list.reduce((sum, word) => sum + word.length, 0);
  return Math.round((total / list.length) * 10) / 10;
}

// Words per sentence: fails on text without sentences (on purpose, for the README).
export function perSentence(text) {
  const sentences = (text.match(/[.!?]/g) ?? []).length;
  if (sentences === 0) {
    throw new RangeError(`no sentence in the text (${words(text).length} words)`);
  }
  return words(text).length / sentences;
}
