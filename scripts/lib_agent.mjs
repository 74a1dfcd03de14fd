// An agent that uses a library: import finds textstats.mjs in the --lib folders.
//   polyspell run scripts/lib_agent.mjs --lib scripts/lib --tools scripts/tools.py
//   polyspell run scripts/lib_agent.mjs --lib scripts/lib --tools scripts/tools.py \
//       city=Nowhere            (fails on purpose, inside the library)
import * as textstats from "textstats";

export async function main(args) {
  const city = args.city ?? "Paris";
  const facts = await tools.search({ query: city, limit: 2 });
  let text = facts.join(" ");
  if (city === "Nowhere") text = "no punctuation here";
  return {
    city,
    top_word: textstats.frequencies(text).top,
    average_length: textstats.averageLength(text),
    words_per_sentence: textstats.perSentence(text),
  };
}
