-- A small research agent: look a city up, get its weather, summarize.
--   polyspell run scripts/agent.lua city=Lisbon --tools scripts/tools.py
--   polyspell run scripts/agent.lua city=Atlantis --tools scripts/tools.py   (fails on purpose)

local function describe(city)
  local facts = tools.search{query = city, limit = 2}
  local report = tools.weather{city = city}          -- no weather station in Atlantis
  return facts, report
end

function main(args)
  local city = args.city or "Paris"

  -- Errors are values with category, kind and fields, caught like any Lua error.
  local ok, err = pcall(tools.translate, {text = city})
  if not ok then
    print("skipping translation: " .. tostring(err))  -- tool/not_found: Tool not found: translate
  end

  local facts, report = describe(city)
  return {
    city = city,
    summary = tools.summarize{texts = facts},
    weather = report.sky .. ", " .. report.celsius .. " C",
  }
end
