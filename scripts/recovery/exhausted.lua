-- Everything fails: the archive is retried once, then its mirror is tried, and both are
-- down. The error says what recovery tried, under the traceback.
--   polyspell run scripts/recovery/exhausted.lua --tools scripts/recovery/tools.py
local function issues_of(year)
  local issues = tools.archive{year = year}
  return issues
end
local issues = issues_of(1999)
return issues
