-- Exports its state but cannot take it back: refused when loaded.
return {
  work = function() return 1 end,
  polyspell_state = function() return {} end,
}
