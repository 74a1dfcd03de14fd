// The tool asks the person; the answer is the tool's result.
async function main() {
  const city = await tools.ask_user({question: "Which city should I look up?"});
  return `looking up ${city}`;
}
