-- A tools file that keeps notes, and keeps them across a restart of its engine. It also
-- leaks a MiB per character of each note (a cache it never frees), so under a 16 MiB limit
-- its engine breaks on the third note; spin loops forever.
--   polyspell run scripts/recovery/notes_agent.lua --tools scripts/recovery/notes.lua
--       --memory-mb 16 --config scripts/recovery/notes.toml --json
local notes = {}
local cache = {}  -- not part of the state: it only grows
local M = {}

function M.add_note(p)
  notes[#notes + 1] = p.text
  cache[#cache + 1] = string.rep(p.text, 2^20)
  return #notes
end

function M.spin() while true do end end

-- the state as JSON-like data (taken after each good call), and back after a restart
function M.polyspell_state() return {notes = notes} end
function M.polyspell_restore(state) notes = state.notes end

return M
