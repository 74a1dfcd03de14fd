// A tools file that keeps a counter, exports it across restarts, and breaks on demand.
// tools.ticket (a Python tool of the test) numbers the calls that ask for trouble, so a
// call fails on its first tries and works once the engine was restarted enough times.
let state = { count: 0 };

exports.bump = async function (p) {
  state.count += 1;
  if (p.blow && (await tools.ticket({})) <= p.blow) {
    // past the memory limit, held where the collector cannot free it: the engine's
    // memory stays full, as in a leak
    globalThis.hog = [];
    for (let i = 0; ; i++) globalThis.hog.push("x".repeat(64) + i);
  }
  return state.count;
};

exports.corrupt = async function (p) {
  if ((await tools.ticket({})) <= p.times) {
    state.count = -999; // half-done work: the state the host must not keep
    throw new AgentError({ kind: "state_corruption", agent_id: "counter",
                           description: "the counter is off" });
  }
  return state.count;
};

exports.deep = async function (p) {
  state.count += 1;
  if ((await tools.ticket({})) <= p.times) {
    const dig = (n) => 1 + dig(n + 1); // past the stack limit
    return dig(0);
  }
  return state.count;
};

// retries 5 s apart: more than its timeout leaves, so it gives up at once
exports.patient = async function (p) {
  return await recovery.retry(() => { throw new Error("not yet"); },
                              { attempts: 3, backoff: "fixed", initial: 5, jitter: 0, on: "any" });
};

exports.spin = function (p) {
  console.log("spin " + state.count);
  for (;;) {}
};

// a call into this same file while this one is in progress
exports.nested = async function (p) { return await tools.bump(p); };

exports.polyspell_state = function () { return state; };
exports.polyspell_restore = function (kept) { state = kept; };
