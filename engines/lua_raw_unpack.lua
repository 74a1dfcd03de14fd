-- The unpack that reads a checked array for the host (_convert_array): raw. Lua 5.5's
-- table.unpack calls the table's __len even when given both bounds, which would run the
-- script's code from Python, after the prelude's check: it could throw (an internal error),
-- loop, or put a function or a cycle into the array before it is read. There the
-- metatable is set aside while unpack reads (and back, even if unpack fails); the
-- versions whose unpack is raw use it as it is.
local unpack = table.unpack or unpack
if _VERSION < "Lua 5.5" then return unpack end
local getmetatable, setmetatable, pcall, error = debug.getmetatable, debug.setmetatable,
  pcall, error
local function back(t, mt, ok, ...)
  setmetatable(t, mt)
  if not ok then error((...), 0) end
  return ...
end
return function(t, i, j)
  local mt = getmetatable(t)
  if mt == nil then return unpack(t, i, j) end
  setmetatable(t, nil)
  return back(t, mt, pcall(unpack, t, i, j))
end
