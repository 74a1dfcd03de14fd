// A script recovering by itself: `lookup` has no policy, so the script retries it; the
// archive fails for good (after its own policies), so the script falls back to a value.
// The host decides and waits: the script is suspended between tries.
//   polyspell run scripts/recovery/in_script.js --tools scripts/recovery/tools.py --json
async function main() {
  const meaning = await recovery.retry(() => tools.lookup({word: "spell"}),
    {attempts: 3, backoff: "fixed", initial: 0.05, jitter: 0, on: ["tool/timeout", "network"]});
  const archive = await recovery.fallback([
    () => tools.archive({year: 1999}),
    () => ["(the archive is down: nothing from 1999)"],
  ]);
  return {meaning, archive};
}
