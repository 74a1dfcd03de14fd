-- A tool ends the run with its result: pcall cannot keep the script going.
on_cancel(function(e) print("cleanup: " .. e.message) end)
local ok, err = pcall(tools.final_answer, {text = "Atlantis is a legend"})
print("pcall caught " .. err.code)
return "this is never the result"
