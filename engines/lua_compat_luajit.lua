-- polyspell: what LuaJIT 2.1 (Lua 5.1 with extensions) lacks of the Lua 5.4 functions
-- that lua_prelude.lua uses, put before the prelude's text by engines/lua.py
-- (_prelude_source) on LuaJIT only; on 5.4 and 5.5, COMPAT is empty and JIT false.
-- These are the prelude's locals, never the script's: a script's environment gets only
-- what its version's own libraries have (no utf8, no math.type on LuaJIT).
local COMPAT = {jit = true}
do
  local floor, byte, find, select = math.floor, string.byte, string.find, select
  local LIMIT = 2 ^ 53  -- a double holds every integer up to here

  -- Numbers are doubles: one that holds an integer value within 2^53 reads as an integer
  -- (what crosses to Python as an int), anything else as a float.
  function COMPAT.math_type(x)
    if type(x) ~= "number" then return nil end
    if x == floor(x) and x >= -LIMIT and x <= LIMIT then return "integer" end
    return "float"
  end

  function COMPAT.math_tointeger(x)
    if COMPAT.math_type(x) == "integer" then return x end
    return nil
  end

  -- utf8.len as Lua 5.4's (strict: no surrogates, nothing above U+10FFFF, no overlong
  -- forms): the number of characters, or nil and the position of the first invalid byte.
  function COMPAT.utf8_len(s, i)
    i = i or 1
    if not find(s, "[\128-\255]", i) then return #s - i + 1 end  -- ASCII: the usual case
    local n, len = 0, #s
    while i <= len do
      local c = byte(s, i)
      local size, low, min
      if c < 0x80 then size = 1
      elseif c >= 0xC2 and c <= 0xDF then size, low, min = 2, c - 0xC0, 0x80
      elseif c >= 0xE0 and c <= 0xEF then size, low, min = 3, c - 0xE0, 0x800
      elseif c >= 0xF0 and c <= 0xF4 then size, low, min = 4, c - 0xF0, 0x10000
      else return nil, i end
      if size > 1 then
        local code = low
        for k = 1, size - 1 do
          local b = byte(s, i + k)
          if not b or b < 0x80 or b > 0xBF then return nil, i end
          code = code * 64 + (b - 0x80)
        end
        if code < min or code > 0x10FFFF or (code >= 0xD800 and code <= 0xDFFF) then
          return nil, i
        end
      end
      n, i = n + 1, i + size
    end
    return n
  end

  function COMPAT.pack(...)
    return {n = select("#", ...), ...}
  end

  COMPAT.unpack = unpack

  -- Lua 5.1 calls no __len for tables: # is raw there.
  function COMPAT.rawlen(v)
    return #v
  end

  -- A coroutine of Lua 5.1 has nothing to close (no to-be-closed variables).
  function COMPAT.co_close()
    return true
  end

  -- debug.getinfo knows no "t" (istailcall) and debug.sethook sets one hook for the whole
  -- state, not one per coroutine: the prelude sets it at each deadline and clears it when
  -- control goes back to the host (so that its own code between two steps runs no hook).
  COMPAT.no_tail_info, COMPAT.tail_info = true, "Sln"

  -- debug.traceback(nil, level) gives nil (a nil message is returned as it is): one with
  -- an empty message, less its first line (the message's), from the caller's level; a
  -- coroutine's from its `co_level` (called as the prelude calls 5.4's: co, nil, level).
  local lua_traceback, sub = debug.traceback, string.sub
  function COMPAT.traceback(co, level, co_level)
    if co then
      if co_level == nil then return lua_traceback(co) end
      return sub(lua_traceback(co, "", co_level), 2)
    end
    local tb = lua_traceback("", level + 1)
    return sub(tb, 2)
  end
  COMPAT.global_hook = true
  -- Whether the hook fired in the prelude's own code on the main thread (between two
  -- steps, or as a step ends), which it never stops: scripts run only in coroutines.
  local running = coroutine.running
  function COMPAT.on_main()
    local co, main = running()
    return co == nil or main == true
  end

  -- Its tracebacks leave out the middle of a deep stack as "\n\t..." with no count: the
  -- prelude rebuilds them from the depth (of the stack of co, or of the caller's).
  COMPAT.levels_left_out = true
  local getinfo = debug.getinfo
  function COMPAT.depth(co)
    local lo, hi = 1, 2
    local function has(level)
      if co then return getinfo(co, level, "l") ~= nil end
      return getinfo(level, "l") ~= nil
    end
    while has(hi) do lo, hi = hi, hi * 2 end
    while hi - lo > 1 do
      local mid = floor((lo + hi) / 2)
      if has(mid) then lo = mid else hi = mid end
    end
    return lo
  end
  -- Lua 5.1 has no `<close>`: the prelude undoes by hand what a guard would have.
  COMPAT.no_close = true

  -- The environment of a chunk a script loads with an explicit nil one: LuaJIT would give
  -- it the state's own globals (an escape); here every global fails, as with a nil _ENV.
  local function no_env(_, k)
    error("attempt to index a nil value (global '" .. tostring(k) .. "')", 2)
  end
  COMPAT.nil_env = setmetatable({}, {__index = no_env, __newindex = no_env,
                                     __metatable = false})
end
