-- A tools file that keeps a counter, exports it across restarts, and breaks on demand.
-- tools.ticket (a Python tool of the test) numbers the calls that ask for trouble, so a
-- call fails on its first tries and works once the engine was restarted enough times.
local state = {count = 0}
local M = {}

function M.bump(p)
  state.count = state.count + 1
  if p.blow and tools.ticket{} <= p.blow then
    local hog = {}
    for i = 1, 1e9 do hog[i] = string.rep("x", 64) .. i end  -- past the memory limit
  end
  return state.count
end

function M.corrupt(p)
  if tools.ticket{} <= p.times then
    state.count = -999  -- half-done work: the state the host must not keep
    error(errors.AgentError{kind = "state_corruption", agent_id = "counter",
                            description = "the counter is off"})
  end
  return state.count
end

function M.deep(p)
  state.count = state.count + 1
  if tools.ticket{} <= p.times then
    -- past the stack limit (C levels, through __index: quicker than 200,000 Lua calls)
    local function dig() return setmetatable({}, {__index = function(_, k) return dig()[k] end}) end
    return dig().x
  end
  return state.count
end

function M.patient(p)
  -- retries 5 s apart: more than its timeout leaves, so it gives up at once
  return recovery.retry(function() error("not yet") end,
                        {attempts = 3, backoff = "fixed", initial = 5, jitter = 0, on = "any"})
end

function M.spin(p)
  print("spin " .. state.count)
  while true do end
end

function M.nested(p)
  return tools.bump(p)  -- a call into this same file while this one is in progress
end

function M.polyspell_state()
  return state
end

function M.polyspell_restore(kept)
  state = kept
end

return M
