-- A tools file in Lua: the functions of the table it returns are tools every script can
-- call, whatever its language (this file runs in an engine of its own for the whole run).
--   polyspell run scripts/trip.js city=Lisbon --tools scripts/helpers.lua --tools scripts/tools.py

local helpers = {}
local visits = 0  -- module state: lives as long as the run

local function forecast(city)
  local report = tools.weather{city = city}  -- no weather station in Atlantis
  return report.sky .. ", " .. report.celsius .. " C"
end

function helpers.brief(params)
  visits = visits + 1
  local facts = tools.search{query = params.city, limit = 1}
  return {city = params.city, fact = facts[1], weather = forecast(params.city), visit = visits}
end

function helpers.shout(params)
  return tools.upper{text = params.text} .. "!"  -- upper is a JavaScript function (text.js)
end

return helpers
