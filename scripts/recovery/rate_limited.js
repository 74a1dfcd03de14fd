// A market-data API that answers its first call with a rate limit ("Retry-After: 0.5").
// The retry waits at least what the service asked for, not its own 0.05 s.
//   polyspell run scripts/recovery/rate_limited.js --tools scripts/recovery/tools.py
async function main() {
  const started = Date.now();
  const price = await tools.quote({symbol: "ACME"});
  const waited = (Date.now() - started) / 1000;
  console.log(`ACME at ${price}, after waiting ${waited >= 0.5 ? "at least" : "only"} 0.5 s`);
  return price;
}
