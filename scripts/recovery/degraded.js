// A morning report: the forecast is required, the headlines are nice to have. The news
// service is down; `headlines` is optional (degraded value []), so the report goes out
// without them, and polyspell says on stderr that it ran degraded.
//   polyspell run scripts/recovery/degraded.js --tools scripts/recovery/tools.py
async function main() {
  const report = {};
  for (const city of ["Paris", "Oslo", "Rome"]) {
    report[city] = {
      weather: await tools.forecast_backup({city}),
      headlines: await tools.headlines({topic: city}),
    };
  }
  console.log(`the news service was called ${(await tools.calls({})).headlines} time(s)`);
  return report;
}
