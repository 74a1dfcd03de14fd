// A tools file whose state hooks misbehave: how is chosen by set_kind.
let kind = "function";

exports.set_kind = function (p) { kind = p.kind; return kind; };

exports.corrupt = function () {
  throw new AgentError({ kind: "state_corruption", agent_id: "hostile", description: "x" });
};

exports.polyspell_state = async function () {
  if (kind === "tool") return await tools.ticket({});
  if (kind === "poison") return { poison: true };
  if (kind === "function") return { f: function () {} };
  if (kind === "cycle") { const s = {}; s.self = s; return s; }
  // huge: one MiB string referenced 200 times is 200 MiB once copied out
  const piece = "x".repeat(1 << 20), many = [];
  for (let i = 0; i < 200; i++) many.push(piece);
  return many;
};

exports.polyspell_restore = function (kept) {
  if (kept.poison) throw new Error("cannot take this state back");
};
