// The words of a text, lower case, in order (imported by textstats.mjs, relative to it).
export function words(text) {
  if (typeof text !== "string") {
    throw new TypeError(`words: expected a string, got ${typeof text}`);
  }
  return text.toLowerCase().match(/\p{L}+/gu) ?? [];
}
