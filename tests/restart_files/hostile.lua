-- A tools file whose state hooks misbehave: how is chosen by set_kind.
local kind = "function"
local M = {}

function M.set_kind(p)
  kind = p.kind
  return kind
end

function M.corrupt()
  error(errors.AgentError{kind = "state_corruption", agent_id = "hostile", description = "x"})
end

function M.polyspell_state()
  if kind == "tool" then return tools.ticket{} end
  if kind == "poison" then return {poison = true} end
  if kind == "function" then return {f = function() end} end
  if kind == "cycle" then local s = {} s.self = s return s end
  -- huge: one MiB string referenced 200 times is 200 MiB once copied out
  local piece, many = string.rep("x", 2^20), {}
  for i = 1, 200 do many[i] = piece end
  return many
end

function M.polyspell_restore(kept)
  if kept.poison then error("cannot take this state back") end
end

return M
