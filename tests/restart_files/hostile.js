// A tools file whose exported state is not data: which kind is chosen by set_kind.
let kind = "function";

exports.set_kind = function (p) { kind = p.kind; return kind; };

exports.polyspell_state = function () {
  if (kind === "function") return { f: function () {} };
  if (kind === "cycle") { const s = {}; s.self = s; return s; }
  // huge: one MiB string referenced 200 times is 200 MiB once copied out
  const piece = "x".repeat(1 << 20), many = [];
  for (let i = 0; i < 200; i++) many.push(piece);
  return many;
};

exports.polyspell_restore = function (kept) {};
