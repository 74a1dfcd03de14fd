// Summarize what the fetch tasks found. An input that failed (strategy "isolate") is an
// error object: it is noted and left out, so the summary degrades instead of failing.
async function main(args) {
  const texts = [];
  const missing = [];
  for (const [id, input] of Object.entries(args.inputs)) {
    if (input.category) missing.push(`${id}: ${input.category}/${input.kind}`);
    else texts.push(input.text);
  }
  const summary = await tools.summarize({texts, max_words: args.max_words ?? 12});
  return {summary, missing};
}
