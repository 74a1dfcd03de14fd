// The same research agent in JavaScript: tool calls return Promises.
//   polyspell run scripts/agent.js city=Lisbon --tools scripts/tools.py
//   polyspell run scripts/agent.js city=Atlantis --tools scripts/tools.py   (fails on purpose)

async function describe(city) {
  const facts = await tools.search({ query: city, limit: 2 });
  const report = await tools.weather({ city });        // no weather station in Atlantis
  return [facts, report];
}

async function main(args) {
  const city = args.city ?? "Paris";

  // Errors are instances of their category class, with kind and fields.
  try {
    await tools.translate({ text: city });
  } catch (e) {
    if (!(e instanceof ToolError && e.kind === "not_found")) throw e;
    console.log(`skipping translation: ${e.message}`);
  }

  const [facts, report] = await describe(city);
  return {
    city,
    summary: await tools.summarize({ texts: facts }),
    weather: `${report.sky}, ${report.celsius} C`,
  };
}
