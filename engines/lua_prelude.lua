-- polyspell prelude: runs once per LuaRuntime, in the runtime's own globals.
-- MESSAGES and CONSTRUCTORS are generated from the error hierarchy, MAX_DEPTH and
-- ITEM_BYTES from bridge/data.py, and put before this file's text by engines/lua.py
-- (prelude_bytecode), and before those, COMPAT: what the Lua version lacks (see
-- lua_compat_luajit.lua; empty on 5.4 and 5.5). budget: the bytes the host may build from
-- data a script hands it. jit: on LuaJIT, whether its compiler stays on (see below).
local monotonic, trusted, budget = ...

local type, next, select, error, pcall, xpcall, tostring, tonumber =
      type, next, select, error, pcall, xpcall, tostring, tonumber
local rawget, rawset, rawlen, rawequal, setmetatable, getmetatable =
      rawget, rawset, rawlen or COMPAT.rawlen, rawequal, setmetatable, getmetatable
local co_create, co_resume, co_yield, co_running, co_status, co_close, co_isyieldable =
      coroutine.create, coroutine.resume, coroutine.yield, coroutine.running,
      coroutine.status, coroutine.close or COMPAT.co_close, coroutine.isyieldable
local sethook, lua_traceback, getinfo, raw_getmetatable, raw_setmetatable =
      debug.sethook, COMPAT.traceback or debug.traceback, debug.getinfo, debug.getmetatable,
      debug.setmetatable
local concat, pack, unpack = table.concat, table.pack or COMPAT.pack,
      table.unpack or COMPAT.unpack
local format, find, gsub, gmatch, match, sub = string.format, string.find, string.gsub,
      string.gmatch, string.match, string.sub
local utf8_len, math_type, math_tointeger, huge = COMPAT.utf8_len or utf8.len,
      COMPAT.math_type or math.type, COMPAT.math_tointeger or math.tointeger, math.huge
local os_clock, os_time, os_date = os.clock, os.time, os.date  -- for scripts
local real_load, real_collectgarbage = load, collectgarbage
local string_lib, table_lib, math_lib, utf8_lib, os_lib = string, table, math, utf8, os
local VERSION = _VERSION
-- LuaJIT: its count hook does not fire inside compiled code, so the compiler is off
-- (interpreted code runs the hook) unless the host kills the worker process at the
-- deadline. Its own libraries beside Lua 5.1's: bit (plain functions on numbers) is the
-- script's; jit and ffi never are (require is the host's, and package.loaded is emptied).
if COMPAT.jit and not select(4, ...) then jit.off() end  -- `...`'s 4th: keep it on

-- Nothing of Python stays reachable, even for trusted scripts (require "python").
python = nil
package.loaded.python = nil
if not trusted then
  string_lib.dump = nil
  -- debug.traceback looks for every function's name in package.loaded; with nothing to
  -- search (constrained scripts have no require) a traceback costs a third.
  for name in next, package.loaded do package.loaded[name] = nil end
  -- but Lua's argument errors name a function called from C by it ('string.rep')
  package.loaded.string, package.loaded.table, package.loaded.math, package.loaded.utf8 =
    string_lib, table_lib, math_lib, utf8_lib
end
-- The metatable of all strings stays Lua's own for scripts (getmetatable("").__index is
-- the string table, and a script may add to it); make_env resets it for every run, with
-- raw accesses only, since that code runs outside the time limit.
local STRING_MT = getmetatable("")
local STRING_MT_FIELDS = {}
for k, v in next, STRING_MT do STRING_MT_FIELDS[k] = v end

-- debug.traceback(nil, level) or debug.traceback(co), without the middle levels that
-- Lua leaves out of a stack deeper than 21 ("...(skipping N levels)"): the frames are
-- the path users read. Names as Lua gives them (bridge/lua.py reads the quoted name).
-- A stack deeper than MAX_LEVELS (runaway recursion) keeps Lua's own traceback: getinfo
-- walks the stack from the top, so rebuilding one costs O(depth^2).
-- With `below`, a traceback that starts above a function that was tail-called (a tool's or
-- an error constructor's, in `return tools.x{}`) starts with Lua's "(...tail calls...)":
-- Lua prints the marker after the frame of the called function, which is left out here.
local MAX_LEVELS = 1000
local TAIL_CALLS = "\t(...tail calls...)"
local function traceback(co, level, below)
  local tb
  if co and level then  -- a suspended coroutine's, from `level` (see site)
    local tail = below and not COMPAT.no_tail_info and getinfo(co, level - 1, "t").istailcall
    tb = lua_traceback(co, nil, level)
    if tail then tb = "stack traceback:\n" .. TAIL_CALLS .. sub(tb, 17) end
  elseif co then
    tb, level = lua_traceback(co), 0
  else
    local tail = below and not COMPAT.no_tail_info and getinfo(level, "t").istailcall
    level = level + 1
    tb = lua_traceback(nil, level)
    if tail then tb = "stack traceback:\n" .. TAIL_CALLS .. sub(tb, 17) end
  end
  local depth
  if COMPAT.levels_left_out then  -- LuaJIT: "\n\t..." and no count
    if not find(tb, "\n\t...\n", 1, true) then return tb end
    -- a runaway recursion (no stack left to spare either) keeps LuaJIT's own traceback
    local far = co and getinfo(co, level + MAX_LEVELS, "l") or
      not co and getinfo(level + MAX_LEVELS, "l")
    if far then return tb end
    depth = COMPAT.depth(co)  -- (at least the depth: the loop below stops at the end)
  else
    if not find(tb, "\t(skipping ", 1, true) then return tb end  -- the usual case
    local skipped = match(tb, "\n\t%.%.%.\t%(skipping (%d+) levels%)")
    if not skipped then return tb end
    depth = tonumber(skipped) + 21  -- Lua shows the first 10 levels and the last 11
  end
  if depth > MAX_LEVELS then return tb end
  local lines, n = {"stack traceback:"}, 1
  for l = level, level + depth - 1 do
    local what_info = COMPAT.tail_info or "Slnt"
    local ar = co and getinfo(co, l, what_info) or getinfo(l, what_info)
    if not ar then break end
    local what
    if ar.namewhat ~= "" then
      what = (ar.namewhat == "global" and "function" or ar.namewhat) .. " '" .. ar.name .. "'"
    elseif ar.what == "main" then
      what = "main chunk"
    elseif ar.what == "C" then
      what = "?"
    else
      what = "function <" .. ar.short_src .. ":" .. ar.linedefined .. ">"
    end
    n = n + 1
    lines[n] = "\t" .. ar.short_src .. ":" .. ar.currentline .. ": in " .. what
    if ar.istailcall then n = n + 1 lines[n] = TAIL_CALLS end
  end
  return concat(lines, "\n")
end

local HOOK_COUNT = 1000        -- instructions between two ticks of the count hook
local MAX_ENTRIES = 1000       -- entries of a thrown table copied for the error report
local NOMEM = "not enough memory"
-- A stack overflow is a limit only when the stack is really full (see stack_full): below
-- this depth, a coroutine that died of one (whose stack cannot be probed) did not overflow.
local OVERFLOW_DEPTH = 180
-- Every metatable the prelude sets is protected (__metatable): getmetatable gives false
-- and setmetatable refuses, so that no script can reach one. A metatable a script could
-- change is a way into code that runs outside the time limit: a __gc field added to it
-- marks every object the prelude gives it afterwards for finalization, and finalizers run
-- with hooks off. Sentinels are compared with rawequal, so that no __eq of a script runs.
-- The private error value that stops a run; the sandbox's catchers re-raise it.
local KILL = setmetatable({}, {__tostring = function() return "polyspell: run stopped" end,
                               __metatable = false})
local REQUEST = {}             -- marks a coroutine yield that carries a tool request

-- State of the current run.
local deadline = huge
local abort, abort_tb          -- why the run is being stopped ("time", "memory")
local env, ERR_MT, prefix = nil, nil, "?:"
-- What the script's files' traceback lines start with: the script's, then its modules'.
local prefixes = {prefix}
-- The coroutines the host runs script code in (the script's, one per call of an exported
-- function): to scripts they are the main thread. Requests wait by id for their reply.
local roots = setmetatable({}, {__mode = "k", __metatable = false})
local waiting, last_id = {}, 0
-- The call sites the host asked for (see site), by request id, until the reply: a failed
-- call's error reuses the traceback instead of making it again.
local asked = {}
local module, exports = nil, {}  -- a tools file's table, and a caller per function
local tool_infos = {}  -- name, description, name, ...
local outbuf, nout = {}, 0
local last_error, last_error_tb  -- the last error a script coroutine died of
local cancel_handlers = {}       -- on_cancel(fn)

-- The count hook looks at the wall clock only every so many ticks: that is a Python call,
-- which waits for the GIL whenever another thread holds it (a look at every tick made a
-- loop 200 times slower next to a busy Python thread). The number of ticks between two
-- looks follows the measured time per tick, to look about every 20 ms, and more often
-- as the deadline nears.
local ticks_left, ticks_gate, tick_seconds, last_look = 1, 1, 1e-5, nil
local LOOK_EVERY = 0.02

-- LuaJIT's one hook for the whole state would fire in the prelude's own code too, as it
-- unwinds: there it is cleared once the run is stopped (every catcher of the sandbox
-- re-raises KILL, so no script code runs after it).
local function kill()
  if COMPAT.global_hook then sethook() end
  error(KILL, 0)
end

-- (LuaJIT: COMPAT.on_main, the prelude's own code on the main thread, is never stopped)
local function hook()
  if abort then
    if COMPAT.on_main and COMPAT.on_main() then return end
    kill()
  end
  ticks_left = ticks_left - 1
  if ticks_left > 0 then return end
  local now = monotonic()
  local left = deadline - now
  if left <= 0 then
    if COMPAT.on_main and COMPAT.on_main() then return end
    abort, abort_tb = "time", traceback(nil, 2)
    kill()
  end
  if last_look then tick_seconds = (now - last_look) / ticks_gate + 1e-9 end
  local ticks = math_lib.floor((left > 2 * LOOK_EVERY and LOOK_EVERY or left / 2) / tick_seconds)
  ticks_gate = ticks < 1 and 1 or ticks > 1e6 and 1e6 or ticks
  ticks_left, last_look = ticks_gate, now
end

-- A new deadline (each start and resume): look at the clock at the first tick. (LuaJIT's
-- one hook for the whole state is set here, and cleared when control goes back to the
-- host: see enter.)
local function set_deadline(dl)
  deadline, ticks_left, last_look = dl, 1, nil
  if COMPAT.global_hook then sethook(hook, "", HOOK_COUNT) end
end

-- Text safe to hand to Python: invalid UTF-8 bytes become U+FFFD.
local function text(s)
  if utf8_len(s) then return s end
  local parts, i = {}, 1
  while true do
    local ok, bad = utf8_len(s, i)
    if ok then parts[#parts + 1] = sub(s, i) break end
    parts[#parts + 1] = sub(s, i, bad - 1) .. "\u{FFFD}"
    i = bad + 1
  end
  return concat(parts)
end

local function keypath(k)
  if type(k) == "string" then
    if find(k, "^[%a_][%w_]*$") then return "." .. k end
    return "[" .. format("%q", k) .. "]"
  end
  return "[" .. format("%d", k) .. "]"
end

-- Whether v is JSON-like data (raw access only: no metamethod runs). Returns nothing
-- when it is, else a message pattern (%s is the path), the offending Lua type, the path
-- below v, and for a cycle or a key that cannot cross "cycle" or "key" (what a request's
-- problem names as its data type; a result's names the Lua type).
-- Counts what the host would build from it (bridge/data.py) in `spent`, and stops the run
-- when that exceeds the budget: each reference to a string or table is a copy in Python.
local active, spent = {}, 0
local check_table
do
-- Arrays check_table checks with the hook off (see there): about 50 ns a value at most.
local gethook, UNHOOKED_MIN, UNHOOKED_MAX = debug.gethook, 256, 65536
function check_table(v, depth)
  if active[v] then return "cyclic table at %s", "table", "", "cycle" end
  if depth >= MAX_DEPTH then
    return "%s is nested more than " .. MAX_DEPTH .. " levels deep", "table", ""
  end
  -- An array of numbers, its keys 1..n met in order (as next walks an array part): the
  -- common case, checked with the least work; anything else is walked again below.
  -- The loop stops at the first key that is not n, so it takes at most rawlen(v) + 1
  -- rounds (a border is never below the first hole); for an array of UNHOOKED_MIN to
  -- UNHOOKED_MAX values it runs with the count hook off (a few ms at most: the hook makes
  -- it 1.5x slower) and the thread's hook is set back as it was (no hook, no change).
  local n, hooked, mask, count = 0, nil, nil, nil
  local length = rawlen(v)
  if length >= UNHOOKED_MIN and length <= UNHOOKED_MAX and not COMPAT.global_hook then
    hooked, mask, count = gethook()
    if hooked then sethook() end
  end
  for k, x in next, v do
    n = n + 1
    if k ~= n or type(x) ~= "number" then n = -1 break end
  end
  if hooked then sethook(hooked, mask, count) end
  if n >= 0 then
    spent = spent + n * ITEM_BYTES
    if spent > budget then
      abort = "large"
      error(KILL, 0)
    end
    return
  end
  active[v] = true
  local nstr, nint, top = 0, 0, 0
  for k, x in next, v do
    local tk = "integer"
    if k == nint + 1 then  -- the usual array key (next walks an array part in order)
      nint = k
      if k > top then top = k end
    else
      tk = math_type(k) or type(k)
      if tk == "string" then
        if not utf8_len(k) then
          active[v] = nil
          return "%s has a key that is not valid UTF-8 text", "table", "", "key"
        end
        nstr = nstr + 1
      elseif tk == "integer" and k > 0 then
        nint = nint + 1
        if k > top then top = k end
      else
        active[v] = nil
        return "%s has a " .. (tk == "float" and "non-integer number" or tk)
               .. " key (keys must be strings, or 1..n for an array)", "table", "", "key"
      end
    end
    local tx = type(x)
    spent = spent + ITEM_BYTES + (tk == "string" and #k or 0) + (tx == "string" and #x or 0)
    if spent > budget then
      abort = "large"
      error(KILL, 0)
    end
    if tx == "number" or tx == "boolean" then  -- nothing more to look at
    elseif tx == "table" then
      local what, lt, path, fault = check_table(x, depth + 1)
      if what then active[v] = nil return what, lt, keypath(k) .. path, fault end
    elseif tx == "string" then
      if not utf8_len(x) then
        active[v] = nil
        return "%s is not valid UTF-8 text", "string", keypath(k)
      end
    else
      active[v] = nil
      return "%s is a " .. tx, tx, keypath(k)
    end
  end
  active[v] = nil
  if nstr > 0 and nint > 0 then return "%s mixes string and integer keys", "table", "", "key" end
  if top ~= nint then return "%s is an array with holes", "table", "" end
end
end

local function check(v)
  local tv = type(v)
  spent = 0
  if tv == "table" then return check_table(v, 0) end
  if tv == "string" then
    if utf8_len(v) then return end
    return "%s is not valid UTF-8 text", "string", ""
  end
  if tv == "number" or tv == "boolean" or tv == "nil" then return end
  return "%s is a " .. tv, tv, ""
end

-- A JSON-like copy of any value, for error reports: functions and other non-data become
-- their description, cycles "<cycle>", keys that JSON cannot have become strings.
local function sanitize(v, depth, seen)
  local tv = type(v)
  if tv == "string" then return text(v) end
  if tv == "number" or tv == "boolean" or tv == "nil" then return v end
  if tv ~= "table" then return format("%s: %p", tv, v) end
  if seen[v] then return "<cycle>" end
  if depth >= MAX_DEPTH then return "<nested too deep>" end
  seen[v] = true
  local copy, nstr, nint, top, count = {}, 0, 0, 0, 0
  for k, x in next, v do
    count = count + 1
    if count > MAX_ENTRIES then break end
    local tk, key = math_type(k) or type(k), k
    if tk == "string" then nstr = nstr + 1 key = text(k)
    elseif tk == "integer" and k > 0 then nint = nint + 1 if k > top then top = k end
    else
      nstr = nstr + 1
      local plain = tk == "float" or tk == "boolean" or tk == "integer"
      key = "[" .. (plain and tostring(k) or tk) .. "]"
    end
    copy[key] = sanitize(x, depth + 1, seen)
  end
  seen[v] = nil
  if nint > 0 and (nstr > 0 or top ~= nint) then  -- not an array: every key a string
    local keyed = {}
    for k, x in next, copy do keyed[type(k) == "string" and k or format("%d", k)] = x end
    copy = keyed
  end
  return copy
end

-- A traceback with only the script's own lines (for the error tables scripts see), and
-- the tail-call markers that follow one of them or start a traceback. The last one made is
-- kept, with what it depends on: a loop failing at one call site makes the same one.
local script_traceback
do
  local function own_lines(tb)
    local out, after = {"stack traceback:"}, false
    for line in gmatch(tb, "[^\n]+") do
      local own = sub(line, 2, #prefix + 1) == prefix
      if not own then
        for i = 2, #prefixes do
          local p = prefixes[i]
          if sub(line, 2, #p + 1) == p then own = true break end
        end
      end
      if own then
        out[#out + 1], after = line, true
      elseif line == TAIL_CALLS then
        if after then out[#out + 1] = line end
        after = false
      else
        after = line == "stack traceback:"
      end
    end
    return concat(out, "\n")
  end

  local last_tb, last_prefixes, last_count, last_out
  script_traceback = function(tb)
    if tb ~= last_tb or prefixes ~= last_prefixes or #prefixes ~= last_count then
      last_out = own_lines(tb)
      last_tb, last_prefixes, last_count = tb, prefixes, #prefixes
    end
    return last_out
  end
end

-- Limits are classified from what Lua observed, never from an error's text alone.
--
-- Memory: Lua 5.5 raises any error value equal to its memory message as a memory error
-- (lua_error: no message handler runs), so error("not enough memory", 0) would look
-- exactly like the allocator refusing. So the sandbox never raises that string for a
-- script: its error and assert (and an xpcall handler's result) raise FORGED_NOMEM
-- instead, a private value that stands for the script's own "not enough memory", and
-- every place the prelude hands an error value back to script code (pcall, xpcall and its
-- handler's argument, coroutine.resume, wrap and close, load) gives the plain string again
-- (`seen`). The string itself as an error value then only ever comes from the allocator,
-- whatever Lua does with error values in flight (a __close handler's error replaces one).
-- Still observable: a __close handler's error argument, which Lua passes unchanged, is
-- the sentinel (a table whose tostring is the message) where plain Lua gives the string.
local NOMEM_MT = {__tostring = function() return NOMEM end, __name = "string",
                  __metatable = false}
local FORGED_NOMEM = setmetatable({}, NOMEM_MT)  -- a fresh one per run (prepare)

local function out_of_memory(e)
  return rawequal(e, NOMEM)
end

-- The error value a script sees for e.
local function seen(e)
  if rawequal(e, FORGED_NOMEM) then return NOMEM end
  return e
end

-- What to raise for v, given to error(v, level) in the caller of this function: v, unless
-- it is exactly NOMEM and Lua would put no position ("file:line:") before it.
local function raisable(v, level)
  if not rawequal(v, NOMEM) then return v end
  if level > 0 then
    local ar = getinfo(level + 1, "l")
    if ar and ar.currentline > 0 then return v end  -- error() will add the position
  end
  return FORGED_NOMEM
end

-- error and assert as Lua's own (levels count from the script's call; the level checked
-- as luaL_checkinteger does). Not tail calls: a tail-called C function would see this
-- frame as level 1.
local PRELUDE_SOURCE = getinfo(1, "S").source
local function s_error(v, level)
  if level == nil then level = 1 end
  local n = tonumber(level)
  if n == nil then
    error("bad argument #2 to 'error' (number expected, got " .. type(level) .. ")", 2)
  end
  n = math_tointeger(n)
  if n == nil then
    error("bad argument #2 to 'error' (number has no integer representation)", 2)
  end
  if n > 0 then  -- the script's level n: the sandbox's own frames (pcall's) are not its
    local l, k = 1, 0
    while k < n do
      l = l + 1
      local ar = getinfo(l, "S")
      if not ar then break end  -- past the stack: no position, as in Lua
      if ar.source ~= PRELUDE_SOURCE then k = k + 1 end
    end
    n = l
  end
  error(raisable(v, n), n)
end

local function s_assert(...)
  if (...) then return ... end
  local n = select("#", ...)
  if n == 0 then error("bad argument #1 to 'assert' (value expected)", 2) end
  local message = "assertion failed!"
  if n > 1 then message = select(2, ...) end
  error(raisable(message, 2), 2)
end

-- Stack: an error saying "stack overflow" is the stack limit only when the stack is full
-- where it was raised: no room for a few hundred more values (Lua's own stack), or for a
-- few more nested C calls (the C stack). Probed in the message handler, before unwinding.
local PROBE = {}
local function nest(n)
  if n == 0 then return true end
  local ok, deeper = pcall(nest, n - 1)
  return ok and deeper
end

local function stack_full()
  return not pcall(unpack, PROBE, 1, 300) or not nest(25)
end

local function has_level(co, level)
  if co then return getinfo(co, level, "l") ~= nil end
  return getinfo(level + 1, "l") ~= nil
end

-- How many levels deep a stack is (getinfo walks it from the top: a doubling then a
-- binary search costs O(depth log depth), counting one by one O(depth^2)).
local function depth_of(co)
  local lo, hi = 1, 2
  while has_level(co, hi) do lo, hi = hi, hi * 2 end
  while hi - lo > 1 do
    local mid = math_lib.floor((lo + hi) / 2)
    if has_level(co, mid) then lo = mid else hi = mid end
  end
  return lo
end

local function says_overflow(e)
  return type(e) == "string" and sub(e, -14) == "stack overflow"
end

-- Whether an error being raised can be the engine's own stack overflow: not when it is
-- raised by Lua's error function, which only the sandbox calls (its error and assert for
-- scripts, its re-raises of what a coroutine died of). Lua raises its overflows itself
-- (luaG_runerror). `level`: the level of the raising function in the stack of `co`, or in
-- the caller's stack (a message handler runs on top of the raising function).
local function engine_raised(co, level)
  local ar
  if co then ar = getinfo(co, level, "f") else ar = getinfo(level + 1, "f") end
  return ar ~= nil and not rawequal(ar.func, error)
end

-- The last stack overflow a script coroutine really died of, and its depth (the script
-- may re-raise it: coroutine.wrap does).
local overflowed, overflow_depth = nil, nil

-- Re-raise what must not be caught inside the sandbox: the deadline and memory errors.
local function pass(ok, ...)
  if not ok then
    local e = ...
    if not abort and out_of_memory(e) then abort = "memory" end
    if abort or rawequal(e, KILL) then error(KILL, 0) end
    if rawequal(e, FORGED_NOMEM) then return false, NOMEM end
  end
  return ok, ...
end

-- Error tables ----------------------------------------------------------------------

local function show(v)  -- a field value as Python's str() writes it in a message
  if v == nil then return "None" end
  if v == true then return "True" elseif v == false then return "False" end
  local tv = type(v)
  if tv == "string" or tv == "number" then return tostring(v) end
  return "<" .. tv .. ">"
end

local templates  -- "category/kind" -> {template, defaults}, read from MESSAGES on first use
local function template_for(code)
  if not templates then
    templates = {}
    for line in gmatch(MESSAGES, "[^\n]+") do
      local key, template, rest = match(line, "^([^\t]*)\t([^\t]*)(.*)$")
      local defaults = {}
      for name, value in gmatch(rest, "\t([^=\t]+)=([^\t]*)") do defaults[name] = value end
      templates[key] = {template, defaults}
    end
  end
  return templates[code]
end

local function error_tostring(e)
  local category, kind, message = rawget(e, "category"), rawget(e, "kind"), rawget(e, "message")
  local code = tostring(category) .. "/" .. tostring(kind)
  if type(message) ~= "string" then
    local known, fields = template_for(code), rawget(e, "fields")
    if type(fields) ~= "table" then fields = {} end
    message = known and gsub(known[1], "{([%w_]+)}", function(name)
      local v = rawget(fields, name)
      if v == nil then return known[2][name] or "None" end
      return show(v)
    end) or ""
  end
  return code .. ": " .. message
end

local function new_error(category, kind, name, fields, message, cause, tb)
  return setmetatable({category = category, kind = kind, name = name, fields = fields,
                       message = message, cause = cause, traceback = tb}, ERR_MT)
end

-- The error table for an envelope from Python (already a table), raised at the call site.
local function as_error(t, tb)
  if type(rawget(t, "fields")) ~= "table" then t.fields = {} end
  t.traceback = tb
  local cause = rawget(t, "cause")
  if type(cause) == "table" then as_error(cause, tb) end
  return setmetatable(t, ERR_MT)
end

-- The error tables the prelude itself raised (sandbox violations), each with a private
-- copy of everything in it as made: one passes for the prelude's own only while all it
-- shows is unchanged (code, name, message, fields, cause, traceback), so that neither a
-- script's own errors.SecurityError{...} nor a caught violation the script edited (its
-- text, its fields) passes for one.
local OWN = setmetatable({}, {__mode = "k", __metatable = false})

local function snapshot(t)
  local c = {}
  for k, v in next, t do c[k] = type(v) == "table" and snapshot(v) or v end
  return c
end

-- Whether table t (raw contents only, as sanitize reads them) is the same as snapshot s.
local function unchanged(t, s, depth)
  if depth > MAX_DEPTH then return false end
  local n = 0
  for k, v in next, t do
    n = n + 1
    local was = rawget(s, k)
    if type(v) == "table" then
      if type(was) ~= "table" or not unchanged(v, was, depth + 1) then return false end
    elseif not rawequal(v, was) then
      return false
    end
  end
  for _ in next, s do n = n - 1 end
  return n == 0
end

local function violation(what, level)
  local e = new_error("security", "script_safety_violation", "SecurityError",
                      {engine = "lua", violation = what}, nil, nil,
                      script_traceback(traceback(nil, level + 1, true)))
  OWN[e] = snapshot(e)
  error(e, level + 1)
end

local ERRORS = {}
for cname, category in next, CONSTRUCTORS do
  ERRORS[cname] = function(spec)
    if type(spec) ~= "table" then
      error("bad argument #1 to '" .. cname .. "' (table expected, got " .. type(spec) .. ")", 2)
    end
    local fields = {}
    for k, v in next, spec do
      if k ~= "kind" and k ~= "message" and k ~= "cause" then fields[k] = v end
    end
    return new_error(category, rawget(spec, "kind"), cname, fields, rawget(spec, "message"),
                     rawget(spec, "cause"), script_traceback(traceback(nil, 2, true)))
  end
end

-- Tool calls ------------------------------------------------------------------------

-- The host cancels a run by failing its next tool call with async_execution/
-- task_cancelled (or task_timeout): the handlers given to on_cancel run first, once.
local function cancelled(e)
  local handlers = cancel_handlers
  cancel_handlers = {}
  for i = 1, #handlers do
    local ok, problem = pcall(handlers[i], e)
    if not ok then
      if not abort and out_of_memory(problem) then abort = "memory" end
      if abort or rawequal(problem, KILL) then error(KILL, 0) end
      outbuf[nout + 1], nout = text("on_cancel handler failed: " .. tostring(problem)), nout + 1
    end
  end
end

local function on_cancel(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'on_cancel' (function expected, got " .. type(fn) .. ")", 2)
  end
  cancel_handlers[#cancel_handlers + 1] = fn
end

-- A request leaves the script's coroutine as REQUEST, name, problem, traceback, params,
-- kind (and, when params is true, the parameters' keys and values: see flat);
-- problem: nil, or why the params cannot cross as {message, data type, path};
-- kind: nil (a tool call) or "recovery" (a step of recovery.retry/fallback: only the
-- prelude passes it, so no tool name a script gives makes one).
-- Why params cannot cross, as {message, data type, path}, or nil.
local function params_problem(nargs, params)
  local problem
  if nargs > 1 then
    problem = {"expected one table of parameters, got " .. nargs .. " arguments", "data",
               "params"}
  elseif params ~= nil then
    if type(params) ~= "table" then
      problem = {"params is a " .. type(params) .. ", expected a table", type(params), "params"}
    else
      spent = 0
      local what, lt, path, fault = check_table(params, 0)
      if what then
        problem = {text(format(what, "params" .. path)), fault or lt, text("params" .. path)}
      end
    end
  end
  return problem
end

-- The error table for the host's error reply to a call made at `tb`.
local function reply_error(value, tb)
  local e = as_error(value, script_traceback(tb))
  local kind = rawget(e, "kind")
  if rawget(e, "category") == "async_execution"
      and (kind == "task_cancelled" or kind == "task_timeout") then
    cancelled(e)
  end
  return e
end

-- Script hooks (hooks.before_tool_call...): nil while the run registered none, so that a
-- call without hooks costs one test. `hooking` counts the hooks running: a tool call a
-- hook makes fires no hook.
local script_hooks, hooking = nil, 0
-- The coroutines a script hook runs in (the number of hooks running in each): a hook
-- cannot yield them, which would leave it suspended, `hooking` counting it, and so every
-- later call of the run without hooks.
local hook_threads = setmetatable({}, {__mode = "k", __metatable = false})
local hooked_call  -- (name, nargs, params, tb): a tool call through the script's hooks

-- The call site's traceback is made only when it is needed: when the call fails, here,
-- and when the host asks for it while the call waits (site): the stack is the same then.
-- A request leaves with no traceback (nil); forward adds one for a script's own coroutine.
-- The script's level is 3 both from here (traceback, call_tool, the tool function) and in
-- the waiting coroutine (yield, call_tool, the tool function): call_tool goes on in
-- flat_call or long_call as tail calls, which take its level.
local call_tool
do
  -- The usual parameters: at most MAX_FLAT string keys, each with a number, a boolean or
  -- valid UTF-8 text. flat gives their keys and values, checked and counted as check_table
  -- would, in one walk (`whole` false once one is not), and they leave the coroutine after
  -- `true` in the params' place: the request then reaches the host with no table to read
  -- (see finish). Anything else (nesting, arrays, more keys, a problem) is check_table's.
  -- `walks` numbers the walks: a trusted script's own debug hook may call a tool while a
  -- walk goes on (a call or return hook), whose walk sets `whole` and `spent` again; the
  -- outer call then sees another number and goes the long way (check_table reads again).
  local MAX_FLAT = 8
  local whole, walks = false, 0

  -- The pairs of `t` after key `k`, the n-th on (next is raw: no script code runs).
  local function flat(t, k, n)
    local key, x = next(t, k)
    if key == nil then return end
    local tx = type(x)
    if n > MAX_FLAT or type(key) ~= "string" or not utf8_len(key) or not (
        tx == "number" or tx == "boolean" or tx == "string" and utf8_len(x)) then
      whole = false
      return
    end
    spent = spent + ITEM_BYTES + #key + (tx == "string" and #x or 0)
    return key, x, flat(t, key, n + 1)
  end

  -- The end of a call: its result, or the host's error raised at the call site (a tail
  -- call too: the level of the call site is the same here).
  local function called(ok, value, tb)
    if ok then return value end
    error(reply_error(value, tb or traceback(nil, 3, true)), 0)
  end

  local function long_call(name, nargs, params, kind)
    local problem = params_problem(nargs, params)
    if problem then params = nil end
    return called(co_yield(REQUEST, text(name), problem, nil, params, kind))
  end

  -- A call with the pairs flat gave, if they are all there.
  local function flat_call(name, kind, params, walk, ...)
    if not whole or walk ~= walks then return long_call(name, 1, params, kind) end
    if spent > budget then
      abort = "large"
      error(KILL, 0)
    end
    return called(co_yield(REQUEST, text(name), nil, nil, true, kind, ...))
  end

  function call_tool(name, nargs, params, kind)
    if script_hooks and kind == nil and hooking == 0 then
      return hooked_call(name, nargs, params, traceback(nil, 3, true))
    end
    if nargs == 1 and type(params) == "table" then
      local walk = walks + 1
      whole, spent, walks = true, 0, walk
      return flat_call(name, kind, params, walk, flat(params, nil, 1))
    end
    return long_call(name, nargs, params, kind)
  end
end

local function tools_index(t, name)
  if type(name) ~= "string" then return nil end
  local f = function(...)
    local result = call_tool(name, select("#", ...), ...)
    return result
  end
  rawset(t, name, f)
  return f
end

local function tools_call(name, ...)
  if type(name) ~= "string" then
    error("bad argument #1 to 'call' (string expected, got " .. type(name) .. ")", 2)
  end
  local result = call_tool(name, select("#", ...), ...)
  return result
end

local function tools_list()
  local list = {}
  for i = 1, #tool_infos, 2 do
    list[#list + 1] = {name = tool_infos[i], description = tool_infos[i + 1]}
  end
  return list
end

-- Sandboxed built-ins -----------------------------------------------------------------

-- Resume a script coroutine; a tool request from inside it is passed up to the host
-- (with the traceback of this side appended) and the reply fed back in.
local function forward(co, ok, ...)
  if ok then
    if not rawequal(..., REQUEST) then return true, ... end
    local _, name, problem, tb = ...
    tb = tb or traceback(co, 3, true)  -- call_tool's request: see there
    return forward(co, co_resume(co, co_yield(REQUEST, name, problem,
                                              tb .. "\n" .. traceback(nil, 2), select(5, ...))))
  end
  local e = ...
  if not abort and out_of_memory(e) then abort = "memory" end
  if abort or rawequal(e, KILL) then error(KILL, 0) end
  last_error, last_error_tb = e, traceback(co)
  if says_overflow(e) and engine_raised(co, 0) then  -- its stack is kept: how deep?
    local depth = depth_of(co)
    if depth >= OVERFLOW_DEPTH then overflowed, overflow_depth = e, depth end
  end
  return false, e
end

-- Lua's own argument errors, located at the script's call (level 3: the caller of the
-- built-in that calls this): a C function of Lua's called from the prelude would name
-- the prelude's local and line instead. `got` names what argument n is, as Lua does.
local function got(n, ...)
  if select("#", ...) < n then return "no value" end
  local v = select(n, ...)
  local mt = raw_getmetatable(v)
  local name = mt and rawget(mt, "__name")
  return type(name) == "string" and name or type(v)
end

local function arg_error(n, fname, problem)
  error(format("bad argument #%d to '%s' (%s)", n, fname, problem), 3)
end

local function expect_thread(fname, ...)
  if type((...)) ~= "thread" then
    error(format("bad argument #1 to '%s' (thread expected, got %s)", fname, got(1, ...)), 3)
  end
end

local function s_create(...)
  local f = ...
  if type(f) ~= "function" then arg_error(1, "create", "function expected, got " .. got(1, ...)) end
  local co = co_create(f)
  sethook(co, hook, "", HOOK_COUNT)  -- hooks are not inherited by new coroutines
  return co
end

-- The coroutines the host runs script code in are the main thread to scripts: one
-- cannot be resumed, closed or yielded from by a script (no reply can be forged).
local function s_resume(...)
  local co = ...
  expect_thread("resume", ...)
  if roots[co] then return false, "cannot resume non-suspended coroutine" end
  return pass(forward(co, co_resume(...)))
end

local function unwrap(co, ok, ...)
  if ok then return ... end
  local e = ...
  local closed, problem = co_close(co)  -- as Lua's wrap: close it, run its __close
  if not closed and not rawequal(problem, e) then
    pass(false, problem)  -- an error of a __close handler: met here first
    e = problem
  end
  error(e, 0)  -- as raised (FORGED_NOMEM stays the sentinel until a catcher shows it)
end

local function s_wrap(...)
  local f = ...
  if type(f) ~= "function" then arg_error(1, "wrap", "function expected, got " .. got(1, ...)) end
  local co = co_create(f)
  sethook(co, hook, "", HOOK_COUNT)
  return function(...)
    return unwrap(co, forward(co, co_resume(co, ...)))
  end
end

local function s_yield(...)
  local co = co_running()
  if roots[co] then error("attempt to yield from outside a coroutine", 0) end
  if hook_threads[co] then error("attempt to yield across a script hook", 0) end
  return co_yield(...)
end

local function s_running()
  local co = co_running()
  return co, roots[co] == true
end

local function s_status(...)
  local co = ...
  expect_thread("status", ...)
  if roots[co] and co ~= co_running() then return "normal" end
  return co_status(co)
end

local function s_isyieldable(...)
  local co = ...
  if select("#", ...) == 0 then co = co_running() else expect_thread("isyieldable", ...) end
  return not roots[co] and not hook_threads[co] and co_isyieldable(co)
end

local function s_close(...)
  local co = ...
  if select("#", ...) == 0 then co = co_running() else expect_thread("close", ...) end
  if roots[co] then
    error(co == co_running() and "cannot close main thread" or "cannot close a normal coroutine", 2)
  end
  return pass(co_close(co))
end

-- The message handler of the sandbox's pcall: notes a real stack overflow before the
-- stack unwinds (the script may raise its message again later).
-- `level`: of the raising function in the caller's stack (1: observe is the handler).
local function observe(e, level)
  if says_overflow(e) and engine_raised(nil, (level or 1) + 1) and stack_full() then
    overflowed, overflow_depth = e, depth_of(nil)
  end
  return e
end

local function s_pcall(...)
  if select("#", ...) == 0 then arg_error(1, "pcall", "value expected") end
  return pass(xpcall(..., observe, select(2, ...)))
end

local function s_xpcall(f, ...)
  local handler = ...
  if type(handler) ~= "function" then
    arg_error(2, "xpcall", "function expected, got " .. got(1, ...))
  end
  return pass(xpcall(f, function(e)
    if abort or rawequal(e, KILL) then return e end
    observe(e, 2)
    -- what xpcall returns: not a memory error, whatever it says
    return raisable(handler(seen(e)), 0)
  end, select(2, ...)))
end

-- Recovery ----------------------------------------------------------------------------

-- recovery.retry and recovery.fallback: the script's functions run here; whether to try
-- again, and every wait, is the host's (host/recovery/script.py), asked by a request of
-- the reserved kind "recovery". The host decides on the error a caught envelope's ref
-- stands for, never on what the script's copy says.
local RECOVERY = "recovery"

-- What the host learns of a caught error, as data.
local function caught(e)
  if type(e) == "table" then
    local ref, category, kind = rawget(e, "ref"), rawget(e, "category"), rawget(e, "kind")
    local message, fields = rawget(e, "message"), rawget(e, "fields")
    return {ref = math_type(ref) == "integer" and ref or nil,
            category = type(category) == "string" and text(category) or nil,
            kind = type(kind) == "string" and text(kind) or nil,
            message = type(message) == "string" and text(message) or nil,
            fields = type(fields) == "table" and sanitize(fields, 1, {}) or nil}
  end
  if type(e) == "string" then return {message = text(seen(e))} end
  return {message = "error value " .. text(tostring(sanitize(e, 0, {})))}
end

-- Call fn protected as the sandbox's pcall does (the deadline and memory pass through):
-- true and its results in a packed table, or false and the error.
local function attempt(fn)
  local r = pack(pass(xpcall(fn, observe)))
  return r[1], r
end

local function recovery_retry(fn, opts)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'retry' (function expected, got " .. type(fn) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'retry' (table expected, got " .. type(opts) .. ")", 2)
  end
  local session = call_tool("retry", 1, {opts = opts}, RECOVERY)
  while true do
    local ok, r = attempt(fn)
    if ok then return unpack(r, 2, r.n) end
    if not call_tool("failed", 1, {session = session, error = caught(r[2])}, RECOVERY) then
      error(raisable(r[2], 0), 0)  -- what fn raised, as it raised it
    end
  end
end

local function recovery_fallback(fns)
  if type(fns) ~= "table" then
    error("bad argument #1 to 'fallback' (table expected, got " .. type(fns) .. ")", 2)
  end
  local list, n = {}, rawlen(fns)
  for i = 1, n do
    local fn = rawget(fns, i)
    if type(fn) ~= "function" then
      error("bad argument #1 to 'fallback' (function expected at index " .. i .. ", got " ..
            type(fn) .. ")", 2)
    end
    list[i] = fn
  end
  local session = call_tool("fallback", 1, {count = n}, RECOVERY)
  for i = 1, n do
    local ok, r = attempt(list[i])
    if ok then return unpack(r, 2, r.n) end
    -- after the last, the host raises runtime/all_fallbacks_failed with every error
    if not call_tool("failed", 1, {session = session, error = caught(r[2])}, RECOVERY) then
      error(raisable(r[2], 0), 0)
    end
  end
end

-- Script hooks ------------------------------------------------------------------------

-- hooks.before_tool_call(fn), hooks.after_tool_call(fn) and hooks.on(point, fn): the
-- script's own hooks on its tool calls, run here, in the script's coroutine, under its
-- limits. Before a call they run before the request leaves the script (so before the
-- host's hooks, which see the params they proceeded with); after a call they see what
-- the host's hooks made of it. Controllers of a point chain in registration order until
-- one answers something other than proceed/continue (nothing returned is that).
local hooks_before, hooks_after, hooks_on  -- the functions of the table `hooks`
do
  local MAX_SCRIPT_HOOKS = 100   -- hooks a run may register, all points together
  local SWITCH_OFF = 3           -- an observer failing this many times in a row is switched off
  local OBSERVABLE = {tool_call_started = true, tool_call_finished = true}
  local OBSERVABLE_LIST = "tool_call_started, tool_call_finished"
  -- what each controller point takes: action -> the one other key it may have
  local ACTIONS = {
    before_tool_call = {proceed = "params", skip = "result"},
    after_tool_call = {continue = false, recover = "result", rethrow = "error"},
  }
  local SAY_ACTIONS = {
    before_tool_call = 'nothing, {action = "proceed", params = ...} or ' ..
                       '{action = "skip", result = ...}',
    after_tool_call = 'nothing, {action = "continue"}, {action = "recover", result = ...} or ' ..
                      '{action = "rethrow", error = ...}',
  }

  local function config_error(value, reason, level)
    error(new_error("configuration", "invalid_value", "ConfigurationError",
                    {key = "hooks", value = value, reason = reason}, nil, nil,
                    script_traceback(traceback(nil, level + 1, true))), level + 1)
  end

  local function register(point, fn, fname)
    if type(fn) ~= "function" then
      error("bad argument #" .. (fname == "on" and 2 or 1) .. " to '" .. fname ..
            "' (function expected, got " .. type(fn) .. ")", 3)
    end
    local h = script_hooks or {before_tool_call = {}, after_tool_call = {},
                               tool_call_started = {}, tool_call_finished = {}, count = 0}
    if h.count >= MAX_SCRIPT_HOOKS then
      config_error(point, "a run registers at most " .. MAX_SCRIPT_HOOKS .. " script hooks", 2)
    end
    local ar = getinfo(fn, "S")
    local list = h[point]
    list[#list + 1] = {fn = fn, name = text(ar.short_src .. ":" .. ar.linedefined), fails = 0}
    h.count = h.count + 1
    script_hooks = h
  end

  hooks_on = function(point, fn)
    if type(point) ~= "string" then
      error("bad argument #1 to 'on' (string expected, got " .. type(point) .. ")", 2)
    end
    if not OBSERVABLE[point] then
      local reason
      if ACTIONS[point] then
        reason = "'" .. point .. "' is a controller point: register with hooks." .. point ..
                 "(fn) (hooks.on takes " .. OBSERVABLE_LIST .. ")"
      else
        reason = "unknown hook point " .. format("%q", text(point)) .. " for a script (a script " ..
                 "observes " .. OBSERVABLE_LIST .. "; the host's other points take Python hooks)"
      end
      config_error(text(point), reason, 1)
    end
    register(point, fn, "on")
  end

  hooks_before = function(fn) register("before_tool_call", fn, "before_tool_call") end
  hooks_after = function(fn) register("after_tool_call", fn, "after_tool_call") end

  -- The message handler of a hook's xpcall: the traceback where the hook failed.
  local hook_tb
  local function hook_handler(e)
    if abort or rawequal(e, KILL) then return e end
    observe(e, 2)
    hook_tb = traceback(nil, 2)
    return e
  end

  -- What a hook returned or raised, shown in a message.
  local function shown(v)
    local tv = type(v)
    if tv == "string" then
      return #v > 60 and format("%q", text(sub(v, 1, 57))) .. "..." or format("%q", text(v))
    end
    if tv == "table" then
      local a = rawget(v, "action")
      if a == nil then return "a table without action" end
      return "{action = " .. shown(a) .. ", ...}"
    end
    if tv == "number" or tv == "boolean" then return tostring(v) end
    return "a " .. tv
  end

  -- Run hook hk on ctx: true and what it returned, or false and the hook/execution_failed
  -- error (the traceback where it failed). The run's stop, a memory error and a real stack
  -- overflow are limits, not the hook's failure: they go on as they are; so does a
  -- sandbox violation (the prelude's own error).
  local function run_hook(hk, point, ctx, tb)
    hooking = hooking + 1
    local co = co_running()
    local depth = hook_threads[co]
    hook_threads[co] = (depth or 0) + 1
    hook_tb = nil
    local ok, r = xpcall(hk.fn, hook_handler, ctx)
    hook_threads[co] = depth
    hooking = hooking - 1
    if ok then return true, r end
    if not abort and out_of_memory(r) then abort = "memory" end
    if abort or rawequal(r, KILL) then error(KILL, 0) end
    if rawequal(r, overflowed) then error(r, 0) end
    if type(r) == "table" and OWN[r] ~= nil and unchanged(r, OWN[r], 0) then error(r, 0) end
    local v, reason = seen(r), nil
    local tv = type(v)
    if tv == "string" then
      reason = v
    elseif tv == "table" and raw_getmetatable(v) == ERR_MT then
      reason = error_tostring(v)
    else
      local mt = (tv == "table" or tv == "userdata") and raw_getmetatable(v)
      if mt and rawget(mt, "__tostring") ~= nil then
        local oks, s = pcall(tostring, v)  -- script code, still under the count hook
        if oks and type(s) == "string" then reason = s end
      end
      reason = reason or "error value " .. shown(v)
    end
    local cause = tv == "table" and type(rawget(v, "category")) == "string" and v or nil
    return false, new_error("hook", "execution_failed", "HookError",
                            {hook_name = hk.name, hook_point = point, reason = text(reason)},
                            nil, cause, script_traceback(hook_tb or tb))
  end

  local function invalid(hk, point, reason, tb, cause)
    return new_error("hook", "invalid_result", "HookError",
                     {hook_name = hk.name, hook_point = point, reason = reason}, nil, cause,
                     script_traceback(tb))
  end

  -- The action a controller answered (nil: proceed/continue), checked: an action of its
  -- point with no other keys than that action's one.
  local function action_of(hk, point, v, tb, cause)
    if v == nil then return nil end
    local takes = ACTIONS[point]
    local a = type(v) == "table" and rawget(v, "action")
    local key = takes[a]
    if key ~= nil then
      for k in next, v do
        if k ~= "action" and k ~= key then key = nil break end
      end
    end
    if key == nil then
      error(invalid(hk, point, "it returned " .. shown(v) .. (type(v) == "table" and
            takes[a] ~= nil and " with a key " .. a .. " does not take" or "") ..
            "; at " .. point .. " a script hook returns " .. SAY_ACTIONS[point], tb, cause), 0)
    end
    return a
  end

  -- Observers: a failure changes nothing of the call; it is reported as an output line, and
  -- after SWITCH_OFF in a row the observer is switched off for the run.
  local function observe_hooks(list, point, ctx, tb)
    for i = 1, #list do
      local hk = list[i]
      if hk.fails < SWITCH_OFF then
        local ok, e = run_hook(hk, point, ctx, tb)
        if ok then
          hk.fails = 0
        else
          hk.fails = hk.fails + 1
          local line = error_tostring(e)
          if hk.fails >= SWITCH_OFF then
            line = line .. " (failed " .. SWITCH_OFF .. " times in a row: switched off)"
          end
          nout = nout + 1
          outbuf[nout] = text(line)
        end
      end
    end
  end

  -- ctx.duration is read from the clock when a hook first reads it (hooks run as the reply
  -- arrives): a clock read is a Python call, about a microsecond, which a call whose hooks
  -- never look at the duration does not pay. Protected, as every metatable of the prelude.
  local BEGAN = setmetatable({}, {__mode = "k", __metatable = false})  -- ctx -> start time
  local DURATION_MT = {__metatable = false, __index = function(ctx, key)
    if key ~= "duration" then return nil end
    local began = BEGAN[ctx]
    local d = began and monotonic() - began or 0
    rawset(ctx, "duration", d)
    return d
  end}

  hooked_call = function(name, nargs, params, tb)
    local h = script_hooks
    name = text(name)
    if #h.tool_call_started > 0 then
      observe_hooks(h.tool_call_started, "tool_call_started", {tool = name, params = params,
                                                               attempt = 1}, tb)
    end
    local skipped, result, err = false, nil, nil
    local list = h.before_tool_call
    if #list > 0 then
      local ctx = {tool = name, params = params, attempt = 1}
      for i = 1, #list do
        local hk = list[i]
        local ok, v = run_hook(hk, "before_tool_call", ctx, tb)
        if not ok then err = v break end
        local a = action_of(hk, "before_tool_call", v, tb)
        if a == "skip" then
          skipped, result = true, rawget(v, "result")
          break
        elseif a == "proceed" and rawget(v, "params") ~= nil then
          params, nargs = rawget(v, "params"), 1
          ctx.params = params
        end
      end
    end
    local began = monotonic()
    if not skipped and err == nil then
      local problem = params_problem(nargs, params)  -- changed params are checked the same
      local ok, value = co_yield(REQUEST, name, problem, tb, not problem and params or nil)
      if ok then result = value else err = reply_error(value, tb) end
      list = h.after_tool_call
      if #list > 0 then
        local ctx = setmetatable({tool = name, params = params, result = result, error = err,
                                  attempt = 1}, DURATION_MT)
        BEGAN[ctx] = began
        for i = 1, #list do
          local hk = list[i]
          local ok, v = run_hook(hk, "after_tool_call", ctx, tb)
          if not ok then
            if rawget(v, "cause") == nil then rawset(v, "cause", err) end
            result, err = nil, v
            break
          end
          local a = action_of(hk, "after_tool_call", v, tb, err)
          if a == "recover" then
            result, err = rawget(v, "result"), nil
            break
          elseif a == "rethrow" then
            local new = rawget(v, "error")
            if new == nil and err == nil then
              new = invalid(hk, "after_tool_call", '{action = "rethrow"} after a call that ' ..
                            'succeeded: give the error to fail with', tb)
            elseif new == nil then
              new = err
            elseif err ~= nil and type(new) == "table" and raw_getmetatable(new) == ERR_MT
                and rawget(new, "cause") == nil then
              rawset(new, "cause", err)  -- the original error as its cause
            end
            result, err = nil, new
            break
          end
        end
      end
    end
    if #h.tool_call_finished > 0 then
      local ctx = setmetatable({tool = name, params = params, result = result, error = err,
                                attempt = 1}, DURATION_MT)
      BEGAN[ctx] = began
      observe_hooks(h.tool_call_finished, "tool_call_finished", ctx, tb)
    end
    if err ~= nil then error(err, 0) end
    return result
  end
end

local function s_load(...)
  local chunk, chunkname, mode, fenv = ...
  local tc, tn, tm = type(chunk), type(chunkname), type(mode)
  if tm ~= "nil" and tm ~= "string" and tm ~= "number" then
    arg_error(3, "load", "string expected, got " .. got(3, ...))
  end
  if tn ~= "nil" and tn ~= "string" and tn ~= "number" then
    arg_error(2, "load", "string expected, got " .. got(2, ...))
  end
  if tc ~= "string" and tc ~= "number" and tc ~= "function" then
    arg_error(1, "load", "function expected, got " .. got(1, ...))
  end
  if tm == "string" and find(mode, "b", 1, true) then
    -- the host's own text: a mode other than Lua's few letters is not quoted
    local shown = match(mode, "^[bt]+$") and "'" .. mode .. "'" or "with a 'b'"
    violation("load() with mode " .. shown .. ": binary chunks are not allowed", 2)
  end
  if tc == "string" and sub(chunk, 1, 1) == "\27" then
    violation("load() of a binary chunk", 2)
  end
  if select("#", ...) < 4 then fenv = env end  -- an explicit nil is a nil _ENV, as in Lua
  -- LuaJIT gives a chunk loaded with a nil environment the state's globals: an escape
  if COMPAT.jit and fenv == nil then fenv = COMPAT.nil_env end
  local f, message = real_load(chunk, chunkname, mode or "t", fenv)
  if f == nil then
    if not abort and out_of_memory(message) then abort = "memory" end
    if abort or rawequal(message, KILL) then error(KILL, 0) end
    -- (LuaJIT says "attempt to load chunk with wrong mode")
    if type(message) == "string" and (find(message, "attempt to load a binary chunk", 1, true)
        or find(message, "attempt to load chunk with wrong mode", 1, true)) then
      violation("load() of a binary chunk", 2)
    end
  end
  return f, seen(message)
end

-- Lua 5.5's options: the allowed ones, and the others, refused as a violation.
local GC_OPTIONS = {count = true, collect = true, step = true, stop = false, restart = false,
                    isrunning = false, generational = false, incremental = false,
                    param = false}
local function s_collectgarbage(...)
  local option, arg = ...
  if option == nil then option = "collect" end
  local to = type(option)
  if to ~= "string" and to ~= "number" then
    arg_error(1, "collectgarbage", "string expected, got " .. got(1, ...))
  end
  local allowed = GC_OPTIONS[option]
  if allowed == nil then
    arg_error(1, "collectgarbage", "invalid option '" .. tostring(option) .. "'")
  elseif not allowed then
    violation("collectgarbage(" .. format("%q", option) .. ")", 2)
  end
  if option == "step" and arg ~= nil then  -- as luaL_optinteger
    local n = tonumber(arg)
    if n == nil then arg_error(2, "collectgarbage", "number expected, got " .. got(2, ...)) end
    arg = math_tointeger(n)
    if arg == nil then arg_error(2, "collectgarbage", "number has no integer representation") end
  end
  return real_collectgarbage(option, arg)
end

-- Finalizers run with hooks off, so a __gc loop could never be stopped.
local function s_setmetatable(...)
  local t, mt = ...
  if type(t) ~= "table" then
    arg_error(1, "setmetatable", "table expected, got " .. got(1, ...))
  end
  if select("#", ...) < 2 or (mt ~= nil and type(mt) ~= "table") then
    arg_error(2, "setmetatable", "nil or table expected, got " .. got(2, ...))
  end
  local old = raw_getmetatable(t)
  if old and rawget(old, "__metatable") ~= nil then
    error("cannot change a protected metatable", 2)
  end
  if mt and rawget(mt, "__gc") ~= nil then
    violation("a __gc metamethod (finalizers would run outside the time limit)", 2)
  end
  return setmetatable(t, mt)
end

local function s_print(...)
  local n = select("#", ...)
  local parts = {...}
  for i = 1, n do
    local v = parts[i]
    local tv = type(v)
    if tv ~= "string" then
      local mt = tv ~= "number" and raw_getmetatable(v)
      local f = mt and rawget(mt, "__tostring")
      if f then  -- called here, so that an error in it is located at the script's call
        v = f(v)
        if type(v) ~= "string" and type(v) ~= "number" then
          error("'__tostring' must return a string", 2)
        end
      end
      parts[i] = tostring(v)
    end
  end
  nout = nout + 1
  outbuf[nout] = text(concat(parts, "\t", 1, n))
end

-- Modules -----------------------------------------------------------------------------

-- require: module resolution is the host's (host/libraries.py). The prelude asks with a
-- request of the reserved kind "module" (only this function makes one, as recovery's),
-- and the host answers {file = name, source = text} or {missing = Lua's "not found"
-- message}, or fails the request (a name that is a path: security/access_denied). The
-- chunk is loaded here under its real file name, in the script's environment, and run
-- once per run: `loaded` is the run's package.loaded. A cycle recurses as in Lua 5.5,
-- whose C stack stops it after MAX_LOADING nested loads ("C stack overflow").
-- req: the run's package.loaded, its nested loads in progress, its files' prefixes.
local req = {loading = 0, loaded = {}, prefixes = prefixes}
local s_require
do
  local MODULE = "module"
  local MAX_LOADING = 195
  local LOADING_GUARD = setmetatable({}, {
    __close = function() req.loading = req.loading - 1 end, __metatable = false})

  -- Line n of source (for a compilation error's source_code).
  local function source_line(source, n)
    local i = 0
    for l in gmatch(source, "([^\n]*)\n?") do
      i = i + 1
      if i == n then return (gsub(l, "\r$", "")) end
      if i > n then break end
    end
    return nil
  end

  -- script/compilation_failed for a module's syntax error `message` (raised at the caller
  -- of require, `level` 3 from here), with the module's line as its innermost frame.
  local function module_syntax_error(file, short, message, source)
    local n, rest = match(sub(message, #short + 2), "^(%d+): (.*)$")
    n = tonumber(n)
    local tb = traceback(nil, 3, true)
    local line = n and source_line(source, n)
    if n then  -- the module's line, as the innermost frame (sub: after "stack traceback:\n")
      tb = "stack traceback:\n\t" .. short .. ":" .. n .. ": in main chunk\n" .. sub(tb, 18)
    end
    local e = new_error("script", "compilation_failed", "ScriptError",
                        {language = "lua", error = text(rest or message), file = text(file),
                         line = n, source_code = line and text(line) or nil},
                        nil, nil, script_traceback(tb))
    OWN[e] = snapshot(e)
    error(e, 0)
  end

  s_require = function(...)
    local name = ...
    local tn = type(name)
    if tn ~= "string" and tn ~= "number" then
      arg_error(1, "require", "string expected, got " .. got(1, ...))
    end
    name = tostring(name)  -- as luaL_checkstring: a number is its text
    local value = req.loaded[name]
    if value then return value end
    local reply = call_tool(name, 1, nil, MODULE)
    local missing = rawget(reply, "missing")
    if missing ~= nil then error(missing, 2) end
    local file, source = rawget(reply, "file"), rawget(reply, "source")
    local chunk, message = real_load(source, "@" .. file, "t", env)
    local short = getinfo(chunk or real_load("", "@" .. file), "S").short_src
    local own, known = short .. ":", false
    for i = 1, #req.prefixes do
      if req.prefixes[i] == own then known = true break end
    end
    if not known then req.prefixes[#req.prefixes + 1] = own end
    if not chunk then
      if not abort and out_of_memory(message) then abort = "memory" end
      if abort or rawequal(message, KILL) then error(KILL, 0) end
      module_syntax_error(file, short, message, source)
    end
    if req.loading >= MAX_LOADING then
      error("error loading module '" .. name .. "' from file '" .. file ..
            "':\n\tC stack overflow", 0)
    end
    req.loading = req.loading + 1
    local guard <close> = LOADING_GUARD
    -- called as the result of a call, so that Lua has no name for it: "main chunk"
    value = select(1, chunk)(name, file)
    -- (LuaJIT has no <close>: a load that raised stays counted until the run ends)
    if COMPAT.no_close then req.loading = req.loading - 1 end
    if value ~= nil then req.loaded[name] = value end
    if req.loaded[name] == nil then req.loaded[name] = true end
    return req.loaded[name], file
  end
end

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

-- A fresh environment per run, so that a run cannot leave anything to the next one.
local function make_env(args, library)
  raw_setmetatable(STRING_MT, nil)
  for k in next, STRING_MT do rawset(STRING_MT, k, nil) end
  for k, v in next, STRING_MT_FIELDS do rawset(STRING_MT, k, v) end
  local string_copy = copy(string_lib)
  rawset(STRING_MT, "__index", string_copy)
  ERR_MT = {__tostring = error_tostring, __name = "SpellError", __metatable = false,
            -- err.code reads "category/kind", as in JS and Python (computed: never stale)
            __index = function(t, k)
              if k == "code" then
                return tostring(rawget(t, "category")) .. "/" .. tostring(rawget(t, "kind"))
              end
            end}
  local e = {
    assert = s_assert, error = s_error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = s_pcall, xpcall = s_xpcall, select = select, tonumber = tonumber,
    tostring = tostring, type = type, rawequal = rawequal, rawget = rawget, rawset = rawset,
    rawlen = not COMPAT.jit and rawlen or nil, setmetatable = s_setmetatable,
    getmetatable = getmetatable, unpack = COMPAT.jit and unpack or nil,
    bit = COMPAT.jit and copy(bit) or nil,
    string = string_copy, table = copy(table_lib), math = copy(math_lib),
    utf8 = utf8_lib and copy(utf8_lib),
    os = {time = os_time, clock = os_clock, date = os_date},
    coroutine = {create = s_create, resume = s_resume, yield = s_yield, status = s_status,
                 wrap = s_wrap, running = s_running, isyieldable = s_isyieldable,
                 close = not COMPAT.jit and s_close or nil},
    load = s_load, collectgarbage = s_collectgarbage, print = s_print, _VERSION = VERSION,
    args = args, errors = copy(ERRORS), on_cancel = on_cancel,
    recovery = {retry = recovery_retry, fallback = recovery_fallback},
    tools = setmetatable({call = tools_call, list = tools_list},
                         {__index = tools_index, __metatable = false}),
  }
  local loaded = {_G = e, string = e.string, table = e.table, math = e.math, utf8 = e.utf8,
                  coroutine = e.coroutine, os = e.os}
  e.package = {loaded = loaded}
  loaded.package = e.package
  req.loaded = loaded
  e.require = s_require
  if not library then  -- a tools file's calls are the host's to hook (Python hooks)
    e.hooks = {before_tool_call = hooks_before, after_tool_call = hooks_after, on = hooks_on}
  end
  e._G = e
  if trusted then
    e.io, e.debug, e.package, e.require, e.dofile, e.loadfile, e.warn =
      io, debug, package, require, dofile, loadfile, warn
    e.os, e.collectgarbage, e.setmetatable = copy(os_lib), real_collectgarbage, setmetatable
    e.load = function(chunk, chunkname, mode, fenv)
      return real_load(chunk, chunkname, mode, fenv == nil and e or fenv)
    end
  end
  return e
end

-- The run ------------------------------------------------------------------------------

local function call_main(main, args)
  local result = main(args)  -- a local named main, so that tracebacks name it
  return result
end

-- The message handler of the run's xpcalls. It runs before the stack unwinds, and makes
-- the report of what was thrown (a copy as data, its Lua type, its tostring, the traceback
-- where it was thrown...), but it gives the error value back unchanged: Lua also calls it
-- for errors that an inner protected call catches (load's "C stack overflow" while
-- parsing), where the value must stay the error's own. `failed` takes the report.
local reported, report  -- the last error on_error saw, and its report
local function on_error(e)
  -- (never called for a memory error: Lua calls no message handler for one)
  if abort or rawequal(e, KILL) then return e end
  reported, report = e, nil
  local v = seen(e)  -- the script's own "not enough memory" is an ordinary error
  local depth  -- the depth of a real stack overflow (see stack_full, engine_raised)
  if says_overflow(e) then
    if engine_raised(nil, 2) and stack_full() then
      depth = depth_of(nil)
    elseif rawequal(e, overflowed) then
      depth = overflow_depth
    end
  end
  local tb = traceback(nil, 2)
  if last_error ~= nil and rawequal(e, last_error) then tb = last_error_tb .. "\n" .. tb end
  local te, described = type(v), nil
  if te == "table" or te == "userdata" then
    local mt = raw_getmetatable(e)
    if mt and mt ~= ERR_MT and rawget(mt, "__tostring") ~= nil then
      local ok, s = pcall(tostring, e)  -- script code, still under the hook
      if ok and type(s) == "string" then described = text(s) end
      if not ok and not abort and out_of_memory(s) then abort = "memory" end
    end
  end
  -- the prelude's own error, unchanged since (a script may have caught and edited it)
  local own = te == "table" and OWN[e] ~= nil and unchanged(e, OWN[e], 0)
  report = {sanitize(v, 0, {}), te, described, text(tb), depth, own}
  return e
end

-- The report of the error an xpcall with on_error ended in (KILL once the run is stopped).
local function failed(e)
  if abort or rawequal(e, KILL) then return KILL end
  local r, seen = report, reported
  reported, report = nil, nil
  -- (Lua 5.5 turns a nil error value into "<no error object>" after the handler ran)
  if r and (rawequal(e, seen) or e ~= e or seen == nil and e == "<no error object>") then
    return r
  end
  return e  -- not seen by on_error (a memory error, an error in the handler): finish reads it
end

-- The script's coroutine. The chunk is called by xpcall itself, so that tracebacks
-- call it "main chunk"; then main(args), if the chunk defined it.
local function body(chunk, args)
  local ok, value = xpcall(chunk, on_error, args)
  if not ok then return false, failed(value) end
  local main = rawget(env, "main")
  if type(main) == "function" then
    ok, value = xpcall(call_main, on_error, main, args)
    if not ok then return false, failed(value) end
  end
  local what, ltype, path = check(value)
  if what then
    return true, value, text(format(what, "result" .. path)), ltype, text("result" .. path)
  end
  return true, value
end

-- What a resumption of a root coroutine came to, as flat values for Python:
-- status, number of buffered output lines, then per status:
--   request id name problem traceback params kind [key value ...] | done value |
--   0 id name [key value ...] (a tool call with flat parameters or none, direct) |
--   bad_result message lua_type path
--   error value lua_type tostring traceback overflow_depth own | abort reason traceback |
--   syntax message
-- An outcome that holds no table (a request with no parameters or flat ones, a result that
-- is not a table: the usual steps) starts with DIRECT: enter returns it itself (see there).
local DIRECT = {}
local function finish(co, ok, a, ...)
  local n = nout
  if abort then return "abort", n, abort, abort_tb and text(abort_tb) end
  if not ok then  -- only a memory error can escape the bodies' xpcall
    if out_of_memory(a) then return "abort", n, "memory" end
    return "error", n, type(a) == "string" and text(a) or type(a), "string"
  end
  if rawequal(a, REQUEST) then
    last_id = last_id + 1
    waiting[last_id] = co
    local _, problem, tb, params, kind = ...
    if problem == nil and type(params) ~= "table" then
      if tb == nil and kind == nil then  -- the usual call: its name and its flat params
        return DIRECT, 0, n, last_id, (...), select(6, ...)
      end
      return DIRECT, "request", n, last_id, ...
    end
    return "request", n, last_id, ...
  end
  local b, c, d, e = ...
  if a then
    if c then return "bad_result", n, c, d, e end
    if type(b) ~= "table" then return DIRECT, "done", n, b end
    return "done", n, b
  end
  if out_of_memory(b) then  -- the chunk's xpcall met a memory error (no handler ran)
    return "abort", n, "memory"
  end
  if type(b) == "table" and not rawequal(b, KILL) then
    return "error", n, b[1], b[2], b[3], b[4], b[5], b[6]
  end
  return "error", n, type(b) == "string" and text(b) or type(b), "string"
end

local function root(body, ...)
  local co = co_create(body)
  sethook(co, hook, "", HOOK_COUNT)
  roots[co] = true
  return finish(co, co_resume(co, ...))
end

-- A fresh environment, then the chunk compiled in it (or the "syntax" outcome).
local function prepare(source, chunkname, args, infos, library)
  abort, abort_tb, last_error, last_error_tb, cancel_handlers = nil, nil, nil, nil, {}
  script_hooks, hooking = nil, 0
  hook_threads = setmetatable({}, {__mode = "k", __metatable = false})
  FORGED_NOMEM, overflowed, overflow_depth = setmetatable({}, NOMEM_MT), nil, nil
  reported, report = nil, nil
  outbuf, nout, waiting, module, exports, asked = {}, 0, {}, nil, {}, {}
  tool_infos = infos
  env = make_env(args, library)
  local chunk, message = real_load(source, chunkname, "t", env)
  if chunk then prefix = getinfo(chunk, "S").short_src .. ":" end  -- raw bytes
  prefixes, req.loading = {prefix}, 0
  req.prefixes = prefixes
  return chunk, message
end

local function start(source, chunkname, args, infos, dl)
  local chunk, message = prepare(source, chunkname, args, infos)
  if not chunk then return "syntax", 0, text(message) end
  set_deadline(dl)
  return root(body, chunk, args)
end

-- A tools file: its chunk returns a table of functions, which the host calls by name.
local function library(chunk)
  local ok, value = xpcall(chunk, on_error)
  if not ok then return false, failed(value) end
  if type(value) ~= "table" then
    return true, nil, "a Lua tools file must return a table of functions, not " ..
      (value == nil and "nothing" or "a " .. type(value)), type(value), "result"
  end
  local names = {}
  for k, v in next, value do
    if type(k) == "string" and type(v) == "function" then
      -- called as a field with a constant name, so that tracebacks name it ("field 'k'")
      exports[k] = real_load(format("local m, p = ... local r = m[%q](p) return r", k),
                             "=(polyspell)", "t", {})
      names[#names + 1] = text(k)
    end
  end
  module = value
  table_lib.sort(names)
  for i = 1, #names do exports[i] = exports[names[i]] end  -- the host calls by position
  return true, names
end

local function load_library(source, chunkname, _, infos, dl)
  local chunk, message = prepare(source, chunkname, {}, infos, true)  -- no caller: empty args
  if not chunk then return "syntax", 0, text(message) end
  set_deadline(dl)
  return root(library, chunk)
end

local function exported(name, params)
  local ok, value = xpcall(exports[name], on_error, module, params)
  if not ok then return false, failed(value) end
  local what, ltype, path = check(value)
  if what then
    return true, value, text(format(what, "result" .. path)), ltype, text("result" .. path)
  end
  return true, value
end

local function call(name, _, params, _, dl)
  set_deadline(dl)
  return root(exported, name, params)
end

-- Deliver the reply to request `id`: ok and the result, or not ok and the error envelope.
local function step(id, ok, value, _, dl)
  local co, tb = waiting[id], asked[id]
  waiting[id], asked[id] = nil, nil
  set_deadline(dl)
  return finish(co, co_resume(co, ok, value, tb))
end

local function drain()
  local lines = outbuf
  outbuf, nout = {}, 0
  return lines
end

local function short_src(chunkname)
  return text(getinfo(real_load("", chunkname), "S").short_src)
end

-- The host's way into the functions above. lupa pushes a call's arguments (strings,
-- tables) and makes a registry reference for each table it reads back outside any
-- protected call, where a refused allocation makes Lua panic and abort the process. So the
-- host hands its values over with `put`, with the memory limit lifted; `enter` runs an
-- entry with the limit back, taking and returning only numbers (or values that need no
-- allocation to push: numbers, booleans, nil, tables already built); and `take` gives the
-- outcome back, with the limit lifted again. The box's slots exist from the start (the
-- constructor makes them), so storing into it never allocates.
-- (A function of its own: the main chunk is at Lua's limit of 200 local variables.)
return (function()
  local ENTRIES = {start, step, load_library, call}
  local box = {false, false, false, false, false, false, false, false}

  local function put(a, b, c, d)
    box[1], box[2], box[3], box[4] = a, b, c, d
  end

  local function boxed(...)
    box[1], box[2], box[3], box[4], box[5], box[6], box[7], box[8] = ...
    return select("#", ...)
  end

  -- An outcome marked DIRECT (strings, numbers, booleans, nil: no table, for which lupa
  -- would make a registry reference) is returned itself, saving the host the take().
  local function returned(first, ...)
    if rawequal(first, DIRECT) then return ... end
    return boxed(first, ...)
  end
  -- LuaJIT: its one hook is cleared as control goes back to the host (see set_deadline)
  local entered = not COMPAT.global_hook and returned or function(...)
    sethook()
    return returned(...)
  end

  -- direct: the values come as arguments (numbers, booleans, nil, tables: no allocation).
  local function enter(index, dl, direct, a, b, c)
    if direct then return entered(ENTRIES[index](a, b, c, nil, dl)) end
    local d
    a, b, c, d = box[1], box[2], box[3], box[4]
    box[1], box[2], box[3], box[4] = nil, nil, nil, nil
    return entered(ENTRIES[index](a, b, c, d, dl))
  end

  -- An error envelope handed over flat (LuaEngine._flat_envelope), built into the box as
  -- `put` holds one that lupa built: the reply to request `id`. Each level's values come
  -- after its fields' count, the innermost cause's first; a level's table is made with
  -- room for its traceback (as_error), its fields' with room for them all.
  local FIELDS = {[0] = function() return {} end,
    function(k1, v1) return {[k1] = v1} end,
    function(k1, v1, k2, v2) return {[k1] = v1, [k2] = v2} end,
    function(k1, v1, k2, v2, k3, v3) return {[k1] = v1, [k2] = v2, [k3] = v3} end,
    function(k1, v1, k2, v2, k3, v3, k4, v4)
      return {[k1] = v1, [k2] = v2, [k3] = v3, [k4] = v4}
    end,
    function(k1, v1, k2, v2, k3, v3, k4, v4, k5, v5)
      return {[k1] = v1, [k2] = v2, [k3] = v3, [k4] = v4, [k5] = v5}
    end,
    function(k1, v1, k2, v2, k3, v3, k4, v4, k5, v5, k6, v6)
      return {[k1] = v1, [k2] = v2, [k3] = v3, [k4] = v4, [k5] = v5, [k6] = v6}
    end,
    function(k1, v1, k2, v2, k3, v3, k4, v4, k5, v5, k6, v6, k7, v7)
      return {[k1] = v1, [k2] = v2, [k3] = v3, [k4] = v4, [k5] = v5, [k6] = v6, [k7] = v7}
    end,
    function(k1, v1, k2, v2, k3, v3, k4, v4, k5, v5, k6, v6, k7, v7, k8, v8)
      return {[k1] = v1, [k2] = v2, [k3] = v3, [k4] = v4, [k5] = v5, [k6] = v6, [k7] = v7,
              [k8] = v8}
    end}

  local function level(cause, n, category, kind, name, message, retryable, retry_after, ref,
                       ...)
    local t = {category = category, kind = kind, name = name, message = message,
               fields = FIELDS[n](...), retryable = retryable, retry_after = retry_after,
               cause = cause, ref = ref, traceback = nil}
    if select("#", ...) == n + n then return t end
    return level(t, select(n + n + 1, ...))
  end

  local function put_error(id, ...)
    box[1], box[2], box[3], box[4] = id, false, level(nil, ...), nil
  end

  local function take()
    local a, b, c, d, e, f, g, h = box[1], box[2], box[3], box[4], box[5], box[6], box[7], box[8]
    box[1], box[2], box[3], box[4], box[5], box[6], box[7], box[8] = nil, nil, nil, nil, nil, nil, nil, nil
    return a, b, c, d, e, f, g, h
  end
  -- A call site, kept for its error (see `asked`); not on LuaJIT, whose elided middle of
  -- a stack past MAX_LEVELS starts two levels later in a coroutine's traceback than in
  -- the running one's.
  local function remembered(co, id)
    local tb = traceback(co, 3, true)
    if not COMPAT.levels_left_out then asked[id] = tb end
    return tb
  end

  -- Lua 5.4 and 5.5's traceback looks for each level's function among the fields of every
  -- table in registry._LOADED (in a constrained run: the real string, table, math and utf8
  -- libraries, some 60 entries, kept for Lua's argument errors), about a third of a call
  -- site's cost. None of their functions can be on a waiting coroutine's stack: they call
  -- back into Lua only with lua_call, across which nothing yields (the yield fails,
  -- "attempt to yield across a C-call boundary", and no request leaves), and no script
  -- reaches those tables to put a function of its own there. So a site is made with an
  -- empty table in their place, which names every level the same, and put back even when
  -- it fails (pcall). Not for trusted scripts (package.loaded is theirs: a function they
  -- put there is named by it), nor on LuaJIT (its traceback looks for no such names).
  local REGISTRY = not trusted and not COMPAT.jit and debug.getregistry()
  local LOADED, UNLOADED = REGISTRY and rawget(REGISTRY, "_LOADED"), {}
  if LOADED ~= package.loaded then REGISTRY = nil end

  -- The traceback of the call site of request `id`, while it waits (see call_tool). It is
  -- made under the script's memory limit, as when every call made it: its size is the
  -- script's to choose (names, depth). Out of memory, the run stops as it would have at
  -- the call, and the site is unknown (nil).
  local function site(id)
    local co = waiting[id]
    if not co then return nil end
    if REGISTRY then rawset(REGISTRY, "_LOADED", UNLOADED) end
    local ok, tb = pcall(remembered, co, id)
    if REGISTRY then rawset(REGISTRY, "_LOADED", LOADED) end
    if ok then return tb end
    if not abort and out_of_memory(tb) then abort = "memory" end
    return nil
  end

  return put, enter, take, drain, short_src, site, put_error
end)()

