-- Publish the summary (here: return it with a title).
local summary = args.inputs.summarize.summary
return {title = args.title, body = summary}
