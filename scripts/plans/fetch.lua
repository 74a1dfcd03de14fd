-- Fetch one source through the Python tool `fetch`; it fails for unknown sources.
local function download(source)
  local text = tools.fetch{source = source}
  return text
end

local text = download(args.source)
return {source = args.source, text = text}
