-- A search API that drops the connection twice, then answers. The tool's retry policy
-- (3 tries, exponential backoff from 0.1 s) gets the script its result; it never sees
-- the two failures.
--   polyspell run scripts/recovery/flaky.lua --tools scripts/recovery/tools.py
local hits = tools.search{query = "lua coroutines"}
for _, hit in ipairs(hits) do print(hit) end
print("search was called " .. tools.calls{}.search .. " times")
return #hits
