-- The main weather service is down. Its breaker opens after two failures: later calls
-- are refused at once (the service is not called) and fall back to forecast_backup.
--   polyspell run scripts/recovery/breaker.lua --tools scripts/recovery/tools.py
for _, city in ipairs{"Paris", "Lisbon", "Oslo", "Rome"} do
  print(tools.forecast{city = city})
end
print("the dead service was called " .. tools.calls{}.forecast .. " times for 4 cities")
