-- A small library for scripts/lib_agent.lua: word statistics of a text.
-- Loaded with require "textstats" from the script's folder's lib/ (polyspell run
-- scripts/lib_agent.lua --lib scripts/lib), it is a chunk of its own file: its errors
-- and frames name textstats.lua and its lines.
local M = {}

-- The words of text, lower case, in order.
function M.words(text)
  if type(text) ~= "string" then
    error("textstats.words: expected a string, got " .. type(text), 2)
  end
  local list = {}
  for word in text:lower():gmatch("%a+") do list[#list + 1] = word end
  return list
end

-- How often each word occurs, and the most frequent one.
function M.frequencies(text)
  local counts, top, most = {}, nil, 0
  for _, word in ipairs(M.words(text)) do
    counts[word] = (counts[word] or 0) + 1
    if counts[word] > most then top, most = word, counts[word] end
  end
  return counts, top
end

-- The average word length, to one decimal.
function M.average_length(text)
  local words, total = M.words(text), 0
  for _, word in ipairs(words) do total = total + #word end
  return math.floor(total / #words * 10 + 0.5) / 10  -- no words: a division by zero is nan
end

-- Words per sentence: fails on text without sentences (on purpose, for the README).
function M.per_sentence(text)
  local sentences = select(2, text:gsub("[.!?]", ""))
  local words = #M.words(text)
  if sentences == 0 then
    error({message = "no sentence in the text", words = words})
  end
  return words / sentences
end

return M
