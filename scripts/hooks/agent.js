// Script-side hooks: this script steers its own tool calls, in JavaScript.
//   polyspell run scripts/hooks/agent.js --tools scripts/tools.py
hooks.beforeToolCall((ctx) => {
  if (ctx.tool === "search") { // the encyclopedia knows lower-case subjects
    return { action: "proceed", params: { query: ctx.params.query.toLowerCase() } };
  }
});

hooks.afterToolCall(function noStation(ctx) {
  if (ctx.error && ctx.tool === "weather") { // no station: say so, go on
    return { action: "recover", result: { sky: "unknown", because: ctx.error.code } };
  }
});

hooks.on("toolCallFinished", (ctx) => {
  console.log(`${ctx.tool}: ${ctx.error ? ctx.error.code : "ok"}`);
});

async function main() {
  const hits = await tools.search({ query: "ATLANTIS" });
  const weather = await tools.weather({ city: "Atlantis" });
  return { hits, weather };
}
