-- Script-side hooks: this script steers its own tool calls, in Lua.
--   polyspell run scripts/hooks/agent.lua --tools scripts/tools.py
hooks.before_tool_call(function(ctx)
  if ctx.tool == "search" then  -- the encyclopedia knows lower-case subjects
    return {action = "proceed", params = {query = string.lower(ctx.params.query)}}
  end
end)

hooks.after_tool_call(function(ctx)
  if ctx.error and ctx.tool == "weather" then  -- no station: say so, go on
    return {action = "recover", result = {sky = "unknown", because = ctx.error.code}}
  end
end)

hooks.on("tool_call_finished", function(ctx)
  print(ctx.tool .. ": " .. (ctx.error and ctx.error.code or "ok"))
end)

local hits = tools.search{query = "ATLANTIS"}
local weather = tools.weather{city = "Atlantis"}
return {hits = hits, weather = weather}
