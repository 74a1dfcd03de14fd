-- An agent that uses a library: require finds textstats.lua in the --lib folders.
--   polyspell run scripts/lib_agent.lua --lib scripts/lib --tools scripts/tools.py
--   polyspell run scripts/lib_agent.lua --lib scripts/lib --tools scripts/tools.py \
--       city=Nowhere            (fails on purpose, inside the library)
local textstats = require "textstats"

function main(args)
  local city = args.city or "Paris"
  local facts = tools.search{query = city, limit = 2}
  local text = table.concat(facts, " ")
  if city == "Nowhere" then text = "no punctuation here" end
  local counts, top = textstats.frequencies(text)
  return {
    city = city,
    top_word = top,
    average_length = textstats.average_length(text),
    words_per_sentence = textstats.per_sentence(text),
  }
end
