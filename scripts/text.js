// A tools file in JavaScript: the functions assigned to `exports` are tools every script
// can call (helpers.lua's shout calls upper: JavaScript -> Lua -> JavaScript).

exports.upper = function upper({ text }) {
  if (typeof text !== "string") throw new TypeError(`upper: text must be a string, got ${typeof text}`);
  return text.toUpperCase();
};

exports.words = ({ text }) => text.split(/\s+/).filter(Boolean).length;
