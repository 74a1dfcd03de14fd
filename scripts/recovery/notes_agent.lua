-- Adds notes through notes.lua, whose engine breaks on the third (memory) and whose spin
-- never ends (an attempt timeout stops it). Restart and retry get the agent through:
--   polyspell run scripts/recovery/notes_agent.lua --tools scripts/recovery/notes.lua
--       --memory-mb 16 --config scripts/recovery/notes.toml --json
for _, text in ipairs{"first", "second", "third"} do
  print(text, tools.add_note{text = text})
end
local ok, err = pcall(tools.spin, {})
print("spin", err.code)
local count = tools.add_note{text = "fourth"}
return count
