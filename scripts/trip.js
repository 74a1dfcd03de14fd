// A JavaScript agent that calls a Lua tools file (helpers.lua), which calls Python tools.
//   polyspell run scripts/trip.js city=Lisbon --tools scripts/helpers.lua --tools scripts/tools.py
//   polyspell run scripts/trip.js city=Atlantis --tools scripts/helpers.lua --tools scripts/tools.py
//     (fails on purpose: the traceback walks JavaScript -> Lua -> Python)

async function plan(city) {
  const brief = await tools.brief({ city });  // a Lua function
  return `${brief.city}: ${brief.fact} (${brief.weather})`;
}

async function main(args) {
  const city = args.city ?? "Paris";
  return { plan: await plan(city) };
}
