// polyspell's JavaScript prelude: evaluated in every fresh quickjs context before the
// script. It evaluates to `api(name)`, which hands the Python engine the few functions it
// calls (setup, run, module, settle, poll, drain). Nothing here calls Python: data crosses
// as JSON strings and plain numbers, strings, booleans and null, both ways.
//
// Scripts get `args`, `tools` (each call records a request and returns a Promise),
// `console`, `hooks` (their own tool-call hooks, see "script hooks"), and `error.stack` with the real file name and without this prelude. The
// error constructors (SpellError, ToolError...) and the explanations of bad data live in
// javascript_errors.js, compiled on first use: quickjs compiles about 50 us of code per KB
// for every new engine, so this file keeps only what every run needs. (The engine reads
// this file as byte code made once per process where the binding allows: about 0.2 ms
// instead of 2.2 ms to compile it; see javascript_bytecode.py.)
//
// Unguarded code: Python calls settle (with a plain value) and poll (without `full`) with no
// time limit, as a tool round trip is cheaper without one (see javascript.py). That code
// must never run the script's code, which could loop forever there. So it calls only this
// file's functions, functions bound before any script ran and the resolve functions of its
// own promises (no method lookups: scripts can change prototypes), reads only properties
// that objects without a prototype own (or arrays it made, by index), joins strings with +
// (a template literal calls String.prototype.concat), and never calls JSON.stringify (it
// reads toJSON even for a string). The state it reads is kept so: requests and console
// lines as JSON text, in lists without a prototype (see newList).
//
// Stacks: quickjs-ng names every file <input>. Prelude functions that can be on a
// script's stack are renamed `polyspell$...`; bridge/javascript.py drops those frames and
// maps <input> to the file name. No JS may run while quickjs builds an error: a time-limit
// interrupt raised there is discarded, so an error-swallowing loop would never stop.
// Hence no Error.prepareStackTrace: the `stack` getter is wrapped instead.
(function () {
  "use strict";
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const indirectEval = eval;
  const isArray = Array.isArray;
  const captureStack = Error.captureStackTrace;
  // Bound now: a script's own Promise.withResolvers must not give settle its resolve.
  const withResolvers = Promise.withResolvers.bind(Promise);
  const joinList = Function.prototype.call.bind(Array.prototype.join); // (list, separator)
  const { get: rawStack, set: setStack } = Object.getOwnPropertyDescriptor(Error.prototype,
    "stack");
  // Bound now, and only these: once a time limit has fired, the binding reads `stack` with
  // no limit and the GIL held, so the stack getter must run no code a script can replace
  // (String/Array/RegExp methods, Symbol.split or Symbol.replace hooks, Function.call).
  const indexOf = Function.prototype.call.bind(String.prototype.indexOf);
  const slice = Function.prototype.call.bind(String.prototype.slice);
  const isWellFormed = Function.prototype.call.bind(String.prototype.isWellFormed);
  const readStack = Function.prototype.call.bind(rawStack);
  const writeStack = Function.prototype.call.bind(setStack);
  // For observedLimit: read before any script ran, run no script code on a real error.
  const getPrototypeOf = Object.getPrototypeOf;
  const ownDescriptor = Object.getOwnPropertyDescriptor;
  const hasOwn = Object.hasOwn;
  const INTERNAL_ERROR = InternalError.prototype;
  const OBJECT_PROTOTYPE = Object.prototype;
  const ARRAY_PROTOTYPE = Array.prototype;
  const RANGE_ERROR = RangeError.prototype;
  const STACK_TRACE_LIMIT = 64;
  // For traceless: Error.stackTraceLimit's own setter (the prelude fixes the limit for
  // scripts, below), the engine's Error and Reflect.construct, read before any script ran.
  const setTraceLimit = Function.prototype.call.bind(
    Object.getOwnPropertyDescriptor(Error, "stackTraceLimit").set);
  const ERROR = Error;
  const construct = Reflect.construct;
  const NO_ARGUMENTS = [];
  // (tables without a prototype, not a Set or a Map: scripts can replace their methods)
  const BLOCKED = { __proto__: null, then: 1, catch: 1, finally: 1, toJSON: 1, constructor: 1 };
  // request id -> [resolve, reject, stack of the call site]; no prototype (unguarded code)
  const waiting = { __proto__: null };
  const toolFunctions = { __proto__: null };
  // tool bound to a name with the bind there was before any script ran: a script's own
  // Function.prototype.bind would be handed `tool`, and could call it with any `this`
  // (a request of a reserved kind)
  const bindTool = Function.prototype.bind.bind(tool);
  // stack of a call site -> its number, so Python parses it once; no prototype (no method
  // or setter of a script's is looked up)
  const sites = { __proto__: null };
  let siteCount = 0;
  const holder = { __proto__: null }; // receives each tool call's stack (captureStack)

  let FILE = "<script>";
  let config = null;
  let errorsSource = "";
  let catalogText = "{}";
  let errors = null; // what javascript_errors.js returns, once loaded
  let strict = false; // check: refuse undefined too (tool parameters)
  let bad = false; // check: found a value without a JSON form
  // Bounds on the data Python reads (bridge/data.py), from setup: how deeply it may nest,
  // and the bytes Python may build from it (ITEM_BYTES per value plus string lengths).
  let maxDepth = 100;
  let itemBytes = 64;
  let budget = Infinity;
  let spent = 0; // check: bytes counted so far
  let depth = 0; // check: the arrays and objects open around the value
  let open = newList(); // check: open[1..depth], the outermost first
  let converting = false; // json: a conversion is under way (a toJSON may call a tool)
  // Long strings in text for Python are handed over as themselves, not quoted by
  // JSON.stringify (which takes about 5 ns a character here): check puts each in `stash`
  // and writes MARK and its number instead, from which Python reads it (stashed, which
  // lets it go). MARK is a secret of Python's (setup), so no string of a script's can be
  // mistaken for one. Numbers are never reused: a text may be sent by a later poll than
  // the one that made it (a request that a result's toJSON makes), and must name its own
  // strings then. A conversion that fails lets its strings go (no text names them).
  // Strings with a lone surrogate (the binding cannot hand those over) stay in the text.
  let stashing = false; // check: the text is for Python (params, a result)
  const stash = { __proto__: null }; // number -> string, until Python reads it
  let marks = 0; // the number of the next string put in the stash
  let mine = null; // the numbers the conversion under way put in the stash (or null)
  let MARK = null;
  let MARK_JSON = null; // MARK as JSON.stringify writes it, without the closing quote
  const LONG_TEXT = 16384;
  // Arrays of numbers skip the replacer (issue 17: it costs about 0.1 us a value here, more
  // than JSON.stringify's own work). check reads such an array once, as JSON.stringify
  // would (its length, then each index in order: the same getters and Proxy traps), into a
  // fresh array without a prototype, where C code sees that every value is a finite number;
  // that array's text then stands in for a placeholder (MARK + "[" + k) that splice() puts
  // back once the text is made. Any other array goes the usual way, read again by
  // JSON.stringify (only getters and traps can tell), and so does an array of more values
  // than a function takes (65535 here), which Reflect.apply refuses after reading its length.
  const MIN_NUMBERS = 16; // fewer are as quick through the replacer
  const applyTo = Reflect.apply;
  const push = Array.prototype.push;
  const every = Function.prototype.call.bind(Array.prototype.every);
  const isFiniteNumber = Number.isFinite;
  const numberValueOf = Function.prototype.call.bind(Number.prototype.valueOf);
  const NUMBER_PROTOTYPE = Number.prototype;
  const isError = Error.isError;
  const setPrototypeOf = Object.setPrototypeOf;
  const startsWith = Function.prototype.call.bind(String.prototype.startsWith);
  let pieces = null; // the conversion under way's placeholders' text and arrays' text, paired
  const STOP = {}; // check throws it to stop JSON.stringify; `stopped` says why
  let stopped = 0; // json: why the last text is null: 0 (a value without a JSON form),
  let caught; // DEEP, LARGE, or THREW (JSON.stringify threw `caught`: a getter, memory...)
  const DEEP = 1;
  const LARGE = 2;
  const THREW = 3;
  let lastId = 0;
  // Whether the requests queued since the last poll may hold data handed over apart from
  // their text, which Python must look for (see poll): a long string (stash) or an array
  // of numbers (numbers()). Set by any conversion, kept until the queue is handed over: a
  // conversion that is not a request's only makes the next poll careful for nothing.
  // (Not ints past 2**53, which Python reads as exact ints where JS holds doubles: check
  // does not see each number JSON.stringify writes, e.g. a Number object's valueOf() when
  // the object was given Object.prototype; Python looks for those itself.)
  let careful = false;
  // Requests not yet handed to Python, as JSON text (4 items each, see poll): the latest
  // ones comma-separated in `queue`, which a long burst moves to the list `queued` in
  // pieces of about 4 KB (appending to one string would copy it each time).
  let queue = "";
  let queued = null;
  let output = newList(); // console lines not yet handed to Python, as JSON strings
  // What poll reports on: the script's run (activation 0) or, in a tools file, one call of
  // an exported function (numbered by Python). state: loading | running | finished | failed
  const activations = { __proto__: null };
  activations[0] = activation();
  let fastId = -1; // the last call callExport answered at once (-1: none), its result
  let fastResult = null;

  // An array-like that no script can reach into: without a prototype, no setter a script
  // defines on Array.prototype or Object.prototype sees it (unguarded code reads it).
  function newList() {
    return { __proto__: null, length: 0 };
  }

  function append(list, text) {
    const length = list.length;
    list[length] = text;
    list.length = length + 1;
  }

  // A stack as scripts see it: the real file name, no prelude frames. Only string indexes,
  // ===, + and the functions bound above (see there).
  // The last text clean() was given and what it made of it: a loop that fails at one call
  // site cleans the same stack each time (twice for a tool error with a cause). What it
  // makes depends on the text, FILE and the modules' lines (segments), which only grow.
  let cleanedText = null;
  let cleanedFile = null;
  let cleanedSegments = -1;
  let cleaned = null;

  function clean(text) {
    if (typeof text !== "string") return text;
    if (text === cleanedText && FILE === cleanedFile && segments.length === cleanedSegments) {
      return cleaned;
    }
    const made = cleanText(text);
    cleanedText = text;
    cleanedFile = FILE;
    cleanedSegments = segments.length;
    cleaned = made;
    return made;
  }

  function cleanText(text) {
    const kept = newList();
    let start = 0;
    while (start < text.length) {
      let end = indexOf(text, "\n", start);
      end = end === -1 ? text.length : end + 1;
      const line = slice(text, start, end);
      start = end;
      if (slice(line, 0, 17) === "    at polyspell$") { // a prelude frame
        // numbers() reads an array through Reflect.apply, where JSON.stringify would
        if (slice(line, 0, 24) === "    at polyspell$numbers" && kept.length !== 0 &&
          kept[kept.length - 1] === "    at apply (native)\n") kept.length--;
        continue;
      }
      if (isBarePosition(line) && endsNative(text, start)) continue; // JSON.parse/eval text
      append(kept, line);
    }
    return replaceAll(replaceAll(replaceAll(relocate(joinList(kept, "")), "<input>:",
      FILE + ":"), "at <eval> (", "at <script> ("), "at $module$ (", "at <module> (");
  }

  // Modules' lines (javascript_modules.py's LineMap): [first line, file, lines, shift] each.
  // Unguarded like clean: string indexes, ===, + and bound functions only.
  const segments = newList();
  const DIGITS = "0123456789";

  function relocate(text) {
    if (segments.length === 0) return text;
    const parts = newList();
    let start = 0;
    for (let at = indexOf(text, "<input>:", 0); at !== -1; at = indexOf(text, "<input>:", start)) {
      let i = at + 8;
      let line = 0;
      let column = 0;
      for (let d = indexOf(DIGITS, text[i], 0); i < text.length && d !== -1;
        d = indexOf(DIGITS, text[++i], 0)) line = line * 10 + d;
      if (text[i] === ":") {
        for (let d = indexOf(DIGITS, text[++i], 0); i < text.length && d !== -1;
          d = indexOf(DIGITS, text[++i], 0)) column = column * 10 + d;
      }
      append(parts, slice(text, start, at));
      start = i;
      let placed = null;
      for (let k = segments.length - 1; k >= 0; k--) {
        const segment = segments[k];
        if (line < segment[0]) continue;
        const local = line - segment[0] + 1;
        if (local <= segment[2] + 2) {
          placed = segment[1] + ":" + (local > segment[2] ? segment[2] : local) + ":" +
            (local === 1 && column > segment[3] ? column - segment[3] : column);
        }
        break;
      }
      append(parts, placed === null ? slice(text, at, i) : placed);
    }
    append(parts, slice(text, start));
    return joinList(parts, "");
  }

  // "    at <input>:12:5\n": a position with no function, before a native frame.
  function isBarePosition(line) {
    if (slice(line, 0, 15) !== "    at <input>:") return false;
    let colons = 0;
    for (let i = 15; i < line.length; i++) {
      const c = line[i];
      if (c === ":") colons++;
      else if (c === "\n") break;
      else if (!(c >= "0" && c <= "9")) return false;
    }
    return colons === 1;
  }

  // Whether the line starting at `start` is "    at ... (native)".
  function endsNative(text, start) {
    let end = indexOf(text, "\n", start);
    if (end === -1) end = text.length;
    return slice(text, start, start + 7) === "    at " && slice(text, end - 8, end) === "(native)";
  }

  function replaceAll(text, from, to) {
    const parts = newList();
    let start = 0;
    for (let at = indexOf(text, from, 0); at !== -1; at = indexOf(text, from, start)) {
      append(parts, slice(text, start, at));
      append(parts, to);
      start = at + from.length;
    }
    append(parts, slice(text, start));
    return joinList(parts, "");
  }

  // JSON.stringify's replacer: notes what JSON would silently drop or change, and stops it
  // (throwing STOP) when the data nests too deeply or grows too large for Python. Each
  // value counts itemBytes, a string its length too (keys: Python's reader shares them),
  // and the budget is checked at every value. `this` holds
  // `value`: the innermost array or object still open, once those finished are closed.
  function check(key, value) {
    // every value counts, null and holes of a sparse array too: a 1e8-long empty array
    // stops here at the budget, not after 1e8 calls
    if ((spent += itemBytes) > budget) stop(LARGE);
    const type = typeof value; // if-else: quicker than a switch in quickjs
    if (type === "number") {
      if (value - value !== 0) bad = true; // NaN, Infinity, -Infinity
    } else if (type === "string") {
      spent += value.length;
      if (spent > budget) stop(LARGE);
      if (stashing && value.length >= LONG_TEXT && isWellFormed(value)) {
        const number = marks++;
        stash[number] = value;
        careful = true;
        if (mine === null) mine = newList();
        append(mine, number);
        return MARK + number;
      }
    } else if (type === "object") {
      if (value === null) return value;
      // a plain object or array is none of these (one look at its prototype: cheaper
      // than three instanceof lookups, the usual case of tool parameters)
      const prototype = getPrototypeOf(value);
      if (prototype !== OBJECT_PROTOTYPE && prototype !== ARRAY_PROTOTYPE) {
        if (value instanceof Map || value instanceof Set || value instanceof Promise) bad = true;
        else if (prototype === NUMBER_PROTOTYPE && isNumberObject(value)) {
          // JSON writes a Number object as the number its valueOf gives: made here, once
          // (JSON then writes it without asking again), so that a NaN or an Infinity is
          // refused as a bare one is. (One given another prototype still goes as JSON
          // writes it: nothing cheap tells it from a plain object.)
          const number = +value;
          if (number - number !== 0) bad = true;
          return number;
        }
      }
      while (depth !== 0 && open[depth] !== this) depth--;
      if (depth >= maxDepth) stop(DEEP);
      if (stashing && isArray(value)) {
        const placeholder = numbers(value);
        if (placeholder !== null) return placeholder;
      }
      open[++depth] = value;
    } else if (type === "undefined") {
      if (strict) bad = true;
    } else if (type !== "boolean") {
      bad = true; // function, bigint, symbol
    }
    return value;
  }

  // Whether `value` is a Number object (its brand, which no script code can fake or see).
  function isNumberObject(value) {
    try {
      numberValueOf(value);
      return true;
    } catch {
      return false;
    }
  }

  // The placeholder of `array` when it holds at least MIN_NUMBERS values, each a finite
  // number (see MIN_NUMBERS), counted against the budget as check counts them; else null.
  function numbers(array) {
    const copy = [];
    setPrototypeOf(copy, null); // no setter of Array.prototype's sees push
    try {
      applyTo(push, copy, array);
    } catch (error) {
      if (tooManyValues(error)) return null;
      throw error; // a getter's or a trap's, as JSON.stringify would have met it
    }
    if (copy.length < MIN_NUMBERS || !every(copy, isFiniteNumber)) return null;
    if ((spent += itemBytes * copy.length) > budget) stop(LARGE);
    careful = true;
    if (pieces === null) pieces = newList();
    const k = pieces.length / 2;
    append(pieces, MARK_JSON + "[" + k + "\"");
    // JSON writes a finite number as ToString does, which join does 40% quicker (only
    // numbers: no toString or toJSON of a script's runs)
    append(pieces, "[" + joinList(copy, ",") + "]");
    return MARK + "[" + k;
  }

  // Whether `error` is the engine's own RangeError for a call with too many arguments,
  // thrown by numbers()'s Reflect.apply itself (its raw stack's first two frames), not one
  // a getter or trap threw while it read (read without running script code: Error.isError
  // is false for a Proxy, and readStack is the engine's own getter).
  const APPLY_IN_NUMBERS = "    at apply (native)\n    at polyspell$numbers ";
  function tooManyValues(error) {
    if (!isError(error) || getPrototypeOf(error) !== RANGE_ERROR) return false;
    const message = ownDescriptor(error, "message");
    if (message === undefined || typeof message.value !== "string" ||
      !startsWith(message.value, "too many arguments")) return false;
    const raw = readStack(error);
    return typeof raw === "string" && startsWith(raw, APPLY_IN_NUMBERS);
  }

  // `text` with each placeholder of numbers() replaced by its array's text, in order (the
  // text holds them in the order check made them), as one flat string.
  function splice(text) {
    const parts = newList();
    let start = 0;
    for (let i = 0; i < pieces.length; i += 2) {
      const at = indexOf(text, pieces[i], start);
      append(parts, slice(text, start, at));
      append(parts, pieces[i + 1]);
      start = at + pieces[i].length;
    }
    append(parts, slice(text, start));
    pieces = null;
    return joinList(parts, "");
  }

  function stop(why) {
    stopped = why;
    throw STOP;
  }

  // The JSON text of `value`, or null when part of it has no JSON form (a function, a
  // cycle, NaN...; and undefined when `refuseUndefined`): errors.problem() says which,
  // `stopped` whether it was cut short instead.
  function json(value, refuseUndefined, forPython) {
    if (converting) return nestedJson(value, refuseUndefined, forPython);
    converting = true;
    strict = refuseUndefined;
    stashing = forPython === true && MARK !== null;
    bad = false;
    spent = 0;
    depth = 0;
    mine = null;
    pieces = null;
    let text;
    try {
      text = stringify(value, check);
    } catch (error) {
      converting = false;
      return stopJson(error);
    }
    converting = false;
    if (bad) return stopJson(STOP, 0);
    if (spent > budget) return stopJson(STOP, LARGE);
    if (pieces !== null) return splice(text);
    return text === undefined ? "null" : text;
  }

  // After json() failed: null, with why in `stopped` (STOP: check said why).
  function stopJson(error, why) {
    if (mine !== null) { // no text names the strings it put aside
      for (let i = 0; i < mine.length; i++) delete stash[mine[i]];
      mine = null;
    }
    pieces = null;
    if (why !== undefined) stopped = why;
    else if (error !== STOP) {
      stopped = THREW;
      caught = error;
    }
    return null;
  }

  // json() called while another conversion runs (a toJSON that calls a tool): the other
  // one's state is kept and given back.
  function nestedJson(value, refuseUndefined, forPython) {
    const outerStrict = strict, outerBad = bad, outerSpent = spent, outerDepth = depth;
    const outerOpen = open, outerStashing = stashing, outerMine = mine, outerPieces = pieces;
    open = newList();
    converting = false;
    try {
      return json(value, refuseUndefined, forPython);
    } finally {
      stashing = outerStashing;
      mine = outerMine;
      pieces = outerPieces;
      strict = outerStrict;
      bad = outerBad;
      spent = outerSpent;
      depth = outerDepth;
      open = outerOpen;
      converting = true;
    }
  }

  // Why json(value) just answered null: {message, type, path} (see errors.problem) and `memory`:
  // 1 when the text would outgrow the budget or making it ran the engine out of memory
  // (observedLimit: the engine's own error, not one a toJSON threw), -1 when the engine
  // threw null (it could not even make its error: javascript.py looks at its memory).
  function failure(value, root, refuseUndefined) {
    let found;
    let memory = 0;
    if (stopped === LARGE) {
      found = { __proto__: null, message: root + " needs more than " + budget +
        " bytes in Python", type: "", path: root };
      memory = 1;
    } else {
      found = loadErrors().problem(value, root, refuseUndefined, stopped === THREW, caught);
      if (stopped === THREW) {
        const seen = observedLimit(caught);
        memory = seen === 1 || seen === -1 ? seen : 0;
      }
    }
    found.memory = memory;
    caught = undefined;
    return found;
  }

  function loadErrors() {
    if (errors === null) {
      errors = indirectEval(errorsSource)({ FILE, json, clean, rawStack, setStack,
        catalog: catalogText, names: config.constructors, maxDepth, parse, setPrototypeOf,
        OBJECT_PROTOTYPE, isNumberObject });
      for (const name of Object.keys(errors.globals)) define(name, errors.globals[name]);
    }
    return errors;
  }

  function define(name, value) {
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true });
  }

  // --------------------------------------------------------------------- tools

  function call(tool, params) {
    if (typeof tool !== "string") throw new TypeError("tools.call: the tool name must be a string");
    if (scriptHooks !== null && hooking === 0) return hooked(tool, params, call);
    return request(tool, undefined, params, call);
  }

  // `this`: {name, json: the name's JSON text} (see toolsHandler)
  function tool(params) {
    if (scriptHooks !== null && hooking === 0) return hooked(this.name, params, tool);
    return request(this.name, this.json, params, tool);
  }

  // Records the request (see poll) and returns its promise. The call site's stack leaves
  // out the frames from `skip` (tool or call) inwards: fewer frames are cheaper to build;
  // `site`, when given, is that stack already taken.
  function request(tool, toolJSON, params, skip, site) {
    if (site === undefined) {
      captureStack(holder, skip);
      site = holder.stack;
    }
    const text = params === undefined ? "{}"
      : params !== null && typeof params === "object" && !isArray(params)
        ? json(params, true, true)
      : null;
    let problem = null;
    if (text === null) { // [message, type, path, memory] (see failure)
      const found = failure(params, "params", true);
      problem = "[" + stringify(found.message) + "," + stringify(found.type) + "," +
        stringify(found.path) + "," + found.memory + "]"; // strings: no toJSON runs
    }
    const id = ++lastId;
    const { promise, resolve, reject } = withResolvers();
    waiting[id] = [resolve, reject, site];
    // Joined with + (a template literal calls String.prototype.concat) and numbered in a
    // table without a prototype (not a Map, whose methods scripts can replace): else a
    // script could forge the item (its id, call site, or a reserved kind of request).
    let number = sites[site];
    if (number === undefined) {
      number = sites[site] = siteCount++;
      number = "[" + number + "," + stringify(site) + "]";
    }
    const name = toolJSON === undefined ? stringify(tool) : toolJSON;
    const item = problem === null ? id + "," + number + "," + name + "," + text
      : -id + "," + number + "," + name + "," + problem;
    if (queue === "") {
      queue = item;
    } else if (queue.length < 4096) {
      queue = queue + "," + item;
    } else {
      if (queued === null) queued = newList();
      append(queued, queue);
      queue = item;
    }
    return promise;
  }

  const toolsHandler = {
    get(target, key) {
      if (key in target || typeof key !== "string" || BLOCKED[key] === 1) return target[key];
      let fn = toolFunctions[key];
      if (fn === undefined) {
        // a native wrapper: only `tool` itself shows in stacks
        fn = bindTool({ name: key, json: stringify(key) });
        Object.defineProperty(fn, "name", { value: key });
        toolFunctions[key] = fn;
      }
      return fn;
    },
  };

  function list() {
    return config.tools.map(([name, description]) => ({ name, description }));
  }

  // ------------------------------------------------------------------ recovery

  // recovery.retry and recovery.fallback: the script's functions run here; whether to
  // try again, and every wait, is the host's (host/recovery/script.py), asked by a
  // request of the reserved kind "recovery": its name is a JSON array, which no tool
  // name (always a string) makes. The host decides on the error a caught envelope's ref
  // stands for, never on what the script's copy says.
  const RETRY = '["retry"]';
  const FALLBACK = '["fallback"]';
  const FAILED = '["failed"]';

  // What the host learns of a caught error, as data.
  function errorReport(error) {
    if (error !== null && typeof error === "object") {
      const { ref, category, kind, message } = error;
      const fields = typeof category === "string" ? json(error.fields ?? {}, false) : null;
      const name = typeof error.name === "string" ? error.name : "Error";
      return {
        ref: typeof ref === "number" ? ref : null,
        category: typeof category === "string" ? category : null,
        kind: typeof kind === "string" ? kind : null,
        message: typeof message !== "string" ? null
          : typeof category === "string" ? message : `${name}: ${message}`,
        fields: fields === null ? null : parse(fields),
      };
    }
    return { message: `uncaught ${typeof error} ${format(error)}` };
  }

  // The engine's own errors (a limit, the interrupt) are never retried or caught here.
  function engineOwn(error) {
    return error !== null && typeof error === "object" && getPrototypeOf(error) === INTERNAL_ERROR;
  }

  async function retry(fn, opts) {
    if (typeof fn !== "function") throw new TypeError("recovery.retry: fn must be a function");
    captureStack(holder, retry);
    const site = holder.stack; // the script's call: every step of this retry is made there
    const session = await request("retry", RETRY, { opts: opts ?? null }, retry, site);
    for (;;) {
      try {
        return await fn();
      } catch (error) {
        if (engineOwn(error)) throw error;
        const again = await request("failed", FAILED, { session, error: errorReport(error) }, retry,
          site);
        if (!again) throw error; // what fn threw, as it threw it
      }
    }
  }

  async function fallback(fns) {
    if (!isArray(fns)) throw new TypeError("recovery.fallback: expected an array of functions");
    const list = [...fns];
    list.forEach((fn, i) => {
      if (typeof fn !== "function") {
        throw new TypeError(`recovery.fallback: item ${i} is not a function`);
      }
    });
    captureStack(holder, fallback);
    const site = holder.stack;
    const session = await request("fallback", FALLBACK, { count: list.length }, fallback, site);
    for (const fn of list) {
      try {
        return await fn();
      } catch (error) {
        if (engineOwn(error)) throw error;
        // after the last, the host rejects with runtime/all_fallbacks_failed
        const next = await request("failed", FAILED, { session, error: errorReport(error) },
          fallback, site);
        if (!next) throw error;
      }
    }
  }

  // ------------------------------------------------------------- script hooks

  // hooks.beforeToolCall(fn), hooks.afterToolCall(fn) and hooks.on(point, fn): the
  // script's own hooks on its tool calls, run here, in the script's context, under its
  // limits. Before a call they run before the request leaves the script (so before the
  // host's hooks, which see the params they proceeded with); after a call they see what
  // the host's hooks made of it. Controllers of a point chain in registration order until
  // one answers something other than proceed/continue (nothing returned is that). A hook
  // may be async (its promise is awaited); a tool call made while a hook runs (before the
  // hook's first await) fires no hook. Lists and records have no prototype: a script's
  // Array.prototype or iterator never sees them.
  const MAX_SCRIPT_HOOKS = 100; // hooks a run may register, all points together
  const SWITCH_OFF = 3; // an observer failing this many times in a row is switched off
  const OBSERVABLE = { __proto__: null, tool_call_started: "tool_call_started",
    toolCallStarted: "tool_call_started", tool_call_finished: "tool_call_finished",
    toolCallFinished: "tool_call_finished" };
  const CONTROLLER_NAMES = { __proto__: null, before_tool_call: "beforeToolCall",
    beforeToolCall: "beforeToolCall", after_tool_call: "afterToolCall",
    afterToolCall: "afterToolCall" };
  // what each controller point takes: action -> the one other key it may have ("": none)
  const ACTIONS = {
    __proto__: null,
    before_tool_call: { __proto__: null, proceed: "params", skip: "result" },
    after_tool_call: { __proto__: null, continue: "", recover: "result", rethrow: "error" },
  };
  const SAY_ACTIONS = {
    __proto__: null,
    before_tool_call: 'nothing, {action: "proceed", params} or {action: "skip", result}',
    after_tool_call: 'nothing, {action: "continue"}, {action: "recover", result} or ' +
      '{action: "rethrow", error}',
  };
  const now = performance.now.bind(performance);
  const promiseThen = Function.prototype.call.bind(Promise.prototype.then);
  const keysOf = Object.keys;
  let scriptHooks = null; // null while the run registered none: a call costs one test
  let hooking = 0; // hooks running (their synchronous part)

  function configError(value, reason) {
    const { ConfigurationError } = loadErrors().globals;
    return new ConfigurationError({ kind: "invalid_value", key: "hooks", value, reason });
  }

  // "name (file:line)" of a hook: its function's name and where it was registered.
  function hookName(fn, skip) {
    let name = "";
    try {
      name = typeof fn.name === "string" ? fn.name : "";
    } catch {}
    captureStack(holder, skip);
    const stack = clean(holder.stack);
    const open = indexOf(stack, "(", 0);
    const close = indexOf(stack, ")", 0);
    let where = open !== -1 && close > open ? slice(stack, open + 1, close)
      : slice(stack, 7, indexOf(stack, "\n", 0) === -1 ? stack.length : indexOf(stack, "\n", 0));
    const colon = where.lastIndexOf(":");
    if (colon > 0 && where.indexOf(":") !== colon) where = slice(where, 0, colon); // no column
    return name === "" ? where : name + " (" + where + ")";
  }

  function register(point, fn, skip) {
    if (typeof fn !== "function") {
      throw new TypeError(`hooks: a hook is a function, not ${fn === null ? "null" : typeof fn}`);
    }
    const h = scriptHooks ?? { __proto__: null, before_tool_call: newList(),
      after_tool_call: newList(), tool_call_started: newList(),
      tool_call_finished: newList(), count: 0 };
    if (h.count >= MAX_SCRIPT_HOOKS) {
      throw configError(point, `a run registers at most ${MAX_SCRIPT_HOOKS} script hooks`);
    }
    append(h[point], { __proto__: null, fn, name: hookName(fn, skip), fails: 0 });
    h.count++;
    scriptHooks = h;
  }

  function beforeToolCall(fn) {
    register("before_tool_call", fn, beforeToolCall);
  }

  function afterToolCall(fn) {
    register("after_tool_call", fn, afterToolCall);
  }

  function on(point, fn) {
    if (typeof point !== "string") {
      throw new TypeError(`hooks.on: the point is a string, not ${point === null ? "null" : typeof point}`);
    }
    const known = OBSERVABLE[point];
    if (known === undefined) {
      const controller = CONTROLLER_NAMES[point];
      throw configError(point, controller !== undefined
        ? `'${point}' is a controller point: register with hooks.${controller}(fn) (hooks.on ` +
          "takes tool_call_started, tool_call_finished)"
        : `unknown hook point ${stringify(point)} for a script (a script observes ` +
          "tool_call_started, tool_call_finished, also written toolCallStarted, " +
          "toolCallFinished; the host's other points take Python hooks)");
    }
    register(known, fn, on);
  }

  function thenable(value) {
    return value !== null && typeof value === "object" && typeof value.then === "function";
  }

  function invoke(hk, ctx) {
    hooking++;
    try {
      return hk.fn(ctx);
    } finally {
      hooking--;
    }
  }

  // The hook/execution_failed error of hook hk that threw `error`, located where it
  // threw (an Error's stack) or else at the call site. A limit goes on as it is.
  function hookFailed(hk, point, error, site) {
    // A limit goes on as it is (observedLimit: null too, which the engine throws when it
    // cannot even make its error). A Proxy's traps run at each look at it (its
    // prototype...), and may throw: the hook failed all the same, with a value that is no
    // Error (a limit met in a trap goes on)
    let limit = false;
    let isError = false;
    try {
      limit = engineOwn(error) || observedLimit(error) !== 0;
      isError = !limit && error instanceof Error;
    } catch (trap) {
      let own = trap === null;
      try {
        own = own || engineOwn(trap);
      } catch {}
      if (own) throw trap;
    }
    if (limit) throw error;
    let reason;
    try {
      reason = isError ? `${error.name}: ${error.message}` : format(error);
    } catch {
      reason = "a value that cannot be shown";
    }
    const { HookError } = loadErrors().globals;
    const spec = { kind: "execution_failed", hook_name: hk.name, hook_point: point, reason };
    if (isError) spec.cause = error;
    const failure = new HookError(spec);
    let stack = null;
    try {
      if (isError) stack = error.stack;
    } catch {}
    // where it threw, then where the script made the call (an after hook runs in a job of
    // its own, whose stack does not reach the call site)
    const tail = clean(site);
    if (typeof stack !== "string") stack = "";
    if (stack.length < tail.length || slice(stack, stack.length - tail.length) !== tail) {
      stack += tail;
    }
    failure.stack = stack;
    return failure;
  }

  function invalid(hk, point, reason, site, cause) {
    const { HookError } = loadErrors().globals;
    const spec = { kind: "invalid_result", hook_name: hk.name, hook_point: point, reason };
    if (cause !== undefined && cause !== null) spec.cause = cause;
    const failure = new HookError(spec);
    failure.stack = clean(site);
    return failure;
  }

  function shown(value) {
    if (typeof value === "string") return stringify(value.length > 60 ? value.slice(0, 57) + "..." : value);
    if (value !== null && typeof value === "object" && !isArray(value)) {
      const action = value.action;
      return action === undefined ? "an object without action" : `{action: ${shown(action)}, ...}`;
    }
    if (isArray(value)) return "an array";
    if (typeof value === "function") return "a function";
    return String(value);
  }

  // The action a controller answered (undefined: proceed/continue), checked: an action of
  // its point with no other keys than that action's one.
  function actionOf(hk, point, value, site, cause) {
    if (value === undefined || value === null) return undefined;
    const takes = ACTIONS[point];
    const action = typeof value === "object" && !isArray(value) ? value.action : undefined;
    let key = typeof action === "string" ? takes[action] : undefined;
    let extra = "";
    if (key !== undefined) {
      const keys = keysOf(value);
      for (let i = 0; i < keys.length; i++) {
        if (keys[i] !== "action" && keys[i] !== key) {
          extra = ` with a key ${stringify(action)} does not take (${stringify(keys[i])})`;
          key = undefined;
          break;
        }
      }
    }
    if (key === undefined) {
      throw invalid(hk, point, `it returned ${shown(value)}${extra}; at ${point} a script ` +
        `hook returns ${SAY_ACTIONS[point]}`, site, cause);
    }
    return action;
  }

  // Observers: a failure changes nothing of the call; it is reported as a console line,
  // and after SWITCH_OFF in a row the observer is switched off for the run. An async
  // observer is not waited for.
  function observeHooks(list, point, ctx, site) {
    const count = list.length; // a hook registered now runs from the next call on
    for (let i = 0; i < count; i++) {
      const hk = list[i];
      if (hk.fails >= SWITCH_OFF) continue;
      let value;
      try {
        value = invoke(hk, ctx);
      } catch (error) {
        observerFailed(hk, point, error, site);
        continue;
      }
      hk.fails = 0;
      if (thenable(value)) {
        const polyspell$failed = (error) => observerFailed(hk, point, error, site);
        try {
          value.then(undefined, polyspell$failed);
        } catch (error) {
          observerFailed(hk, point, error, site);
        }
      }
    }
  }

  function observerFailed(hk, point, error, site) {
    // a thrown null changes nothing either (out of memory, the next allocation fails again)
    const failure = hookFailed(hk, point, error === null ? "null" : error, site);
    hk.fails++;
    let line = `${failure.code}: ${failure.message}`;
    if (hk.fails >= SWITCH_OFF) {
      line += ` (failed ${SWITCH_OFF} times in a row: switched off)`;
    }
    append(output, stringify(line));
  }

  // A tool call through the script's hooks (see above); `site`: the call site's stack.
  // Sync hooks keep it to one promise reaction more than a plain call (an async function
  // would cost three times that), and the state of a call after its request is passed in
  // arguments, not in objects (quickjs makes an object in about a microsecond): only a
  // hook that returns a promise takes the async path.
  function hooked(name, params, skip) {
    captureStack(holder, skip);
    const site = holder.stack;
    const h = scriptHooks;
    if (h.tool_call_started.length !== 0) {
      observeHooks(h.tool_call_started, "tool_call_started", { tool: name, params, attempt: 1 },
        site);
    }
    const count = h.before_tool_call.length; // a hook registered now runs from the next call
    if (count === 0) return send(h, name, params, site);
    const state = { __proto__: null, params, count };
    return before(h, name, { tool: name, params, attempt: 1 }, state, site, 0);
  }

  // The before hooks from index i on; `state`: the params so far, and how many hooks run.
  function before(h, name, ctx, state, site, i) {
    const list = h.before_tool_call;
    for (; i < state.count; i++) {
      const hk = list[i];
      let value;
      try {
        value = invoke(hk, ctx);
      } catch (error) {
        return early(h, name, state.params, site, null,
          hookFailed(hk, "before_tool_call", error, site));
      }
      if (thenable(value)) return beforeAsync(h, name, ctx, state, site, i, value);
      const stop = decideBefore(h, hk, value, name, ctx, state, site);
      if (stop !== undefined) return stop;
    }
    return send(h, name, state.params, site);
  }

  async function beforeAsync(h, name, ctx, state, site, i, pending) {
    const hk = h.before_tool_call[i];
    let value;
    try {
      value = await pending;
    } catch (error) {
      return early(h, name, state.params, site, null,
        hookFailed(hk, "before_tool_call", error, site));
    }
    const stop = decideBefore(h, hk, value, name, ctx, state, site);
    return stop !== undefined ? stop : before(h, name, ctx, state, site, i + 1);
  }

  // What a before hook's answer does: undefined to go on, or the call's promise.
  function decideBefore(h, hk, value, name, ctx, state, site) {
    let action;
    try {
      action = actionOf(hk, "before_tool_call", value, site);
    } catch (error) {
      return early(h, name, state.params, site, null, error);
    }
    if (action === "skip") return early(h, name, state.params, site, value.result, null);
    if (action === "proceed" && value.params !== undefined) {
      ctx.params = state.params = value.params; // request() checks them as the script's own
    }
    return undefined;
  }

  // A call that ended before its request: skipped (error null) or failed.
  function early(h, name, params, site, result, error) {
    const { promise, resolve, reject } = withResolvers();
    try {
      resolve(settleCall(h, name, params, site, 0, result, error, error !== null));
    } catch (thrown) {
      reject(thrown);
    }
    return promise;
  }

  function send(h, name, params, site) {
    const began = now();
    // named so, these closures stay out of the stacks scripts see (see clean)
    const polyspell$result = (result) => after(h, name, params, site, began, result, null, false);
    const polyspell$error = (error) => after(h, name, params, site, began, null, error, true);
    return promiseThen(request(name, undefined, params, undefined, site), polyspell$result,
      polyspell$error);
  }

  function after(h, name, params, site, began, result, error, failed) {
    const count = h.after_tool_call.length;
    if (count === 0) return settleCall(h, name, params, site, began, result, error, failed);
    const ctx = { tool: name, params, result, error, duration: (now() - began) / 1000,
      attempt: 1 };
    return afterFrom(h, name, params, site, began, ctx, 0, count, result, error, failed);
  }

  function afterFrom(h, name, params, site, began, ctx, i, count, result, error, failed) {
    const list = h.after_tool_call;
    for (; i < count; i++) {
      const hk = list[i];
      let value;
      try {
        value = invoke(hk, ctx);
      } catch (thrown) {
        const failure = afterFailure(hk, thrown, site, error, failed);
        return settleCall(h, name, params, site, began, null, failure, true);
      }
      if (thenable(value)) {
        return afterAsync(h, name, params, site, began, ctx, i, count, result, error, failed,
          value);
      }
      const outcome = decideAfter(hk, value, site, error, failed);
      if (outcome !== undefined) {
        return settleCall(h, name, params, site, began, outcome[0], outcome[1], outcome[2]);
      }
    }
    return settleCall(h, name, params, site, began, result, error, failed);
  }

  async function afterAsync(h, name, params, site, began, ctx, i, count, result, error, failed,
    pending) {
    const hk = h.after_tool_call[i];
    let value;
    try {
      value = await pending;
    } catch (thrown) {
      const failure = afterFailure(hk, thrown, site, error, failed);
      return settleCall(h, name, params, site, began, null, failure, true);
    }
    const outcome = decideAfter(hk, value, site, error, failed);
    if (outcome !== undefined) {
      return settleCall(h, name, params, site, began, outcome[0], outcome[1], outcome[2]);
    }
    return afterFrom(h, name, params, site, began, ctx, i + 1, count, result, error, failed);
  }

  // A failed after hook's error: the call's, with the error it decided on as its cause.
  function afterFailure(hk, thrown, site, error, failed) {
    const failure = hookFailed(hk, "after_tool_call", thrown, site);
    if (failed && failure.cause === undefined) failure.cause = error;
    return failure;
  }

  // What an after hook's answer does: undefined to go on, else the outcome it decided,
  // [result, error, failed] (the hooks after it do not run).
  function decideAfter(hk, value, site, error, failed) {
    let action;
    try {
      action = actionOf(hk, "after_tool_call", value, site, failed ? error : undefined);
    } catch (invalidResult) {
      return [null, invalidResult, true];
    }
    if (action === "recover") return [value.result, null, false];
    if (action !== "rethrow") return undefined;
    let replaced = value.error;
    if (replaced === undefined && !failed) {
      replaced = invalid(hk, "after_tool_call", '{action: "rethrow"} after a call that ' +
        "succeeded: give the error to fail with", site);
    } else if (replaced === undefined) {
      replaced = error;
    } else if (failed && replaced instanceof Error && !hasOwn(replaced, "cause")) {
      replaced.cause = error; // the original error as its cause
    }
    return [null, replaced, true];
  }

  // The finished observers, then the call's outcome (thrown: its promise rejects).
  function settleCall(h, name, params, site, began, result, error, failed) {
    if (h.tool_call_finished.length !== 0) {
      observeHooks(h.tool_call_finished, "tool_call_finished", { tool: name, params,
        result: failed ? null : result, error: failed ? error : null,
        duration: began === 0 ? 0 : (now() - began) / 1000, attempt: 1 }, site);
    }
    if (failed) throw error;
    return result;
  }

  // ------------------------------------------------------------------- console

  function format(value) {
    if (typeof value === "string") return value;
    if (value instanceof Error) return `${value.name}: ${value.message}`;
    if (typeof value === "function") return `[Function ${value.name || "(anonymous)"}]`;
    try {
      const text = stringify(value);
      if (text !== undefined) return text;
    } catch {}
    return String(value);
  }

  function log(...values) {
    append(output, stringify(String(values.map(format).join(" "))));
  }

  // ----------------------------------------------------------------------- run

  function activation() {
    return { __proto__: null, state: "loading", result: undefined, failure: null, limit: 0 };
  }

  // Which limit the engine hit, if `error` is the engine's own limit error: 1 memory, 2
  // stack, else 0. Decided from what the engine made, never from what a script can write:
  // a real error object (the engine's backtrace getter answers only for those, and for no
  // Proxy, without running a trap), with the engine's prototype and its own message as a
  // data property (no getter runs); a stack overflow also needs a full backtrace (the
  // engine throws it deep down; a script's look-alike made near the top has a short one).
  // Scripts cannot construct an InternalError (see the end of this file). -1: maybe
  // memory (memory if the engine is still nearly full, javascript.py): a thrown null, which
  // quickjs throws when it cannot even make its out-of-memory error, or an InternalError it
  // could not finish making (no backtrace, or no message).
  function observedLimit(error) {
    if (error === null) return -1;
    if (typeof error !== "object") return 0;
    let stack;
    try {
      stack = readStack(error);
    } catch {
      return 0;
    }
    // (isError first: no Proxy's trap runs; a stack only a real error has)
    const prototype = isError(error) ? getPrototypeOf(error) : null;
    const unfinished = prototype === INTERNAL_ERROR ? -1 : 0;
    if (typeof stack !== "string") return unfinished;
    const described = ownDescriptor(error, "message");
    if (described === undefined || !hasOwn(described, "value")) return unfinished;
    const message = described.value;
    if (prototype === INTERNAL_ERROR) {
      if (message === "out of memory" || message === "string too long") return 1;
      if (message === "stack overflow" && framesIn(stack) >= STACK_TRACE_LIMIT) return 2;
    } else if (prototype === RANGE_ERROR && message === "Maximum call stack size exceeded" &&
      framesIn(stack) >= STACK_TRACE_LIMIT) {
      return 2;
    }
    return 0;
  }

  function framesIn(stack) {
    let count = 0;
    for (let at = indexOf(stack, "    at ", 0); at !== -1; at = indexOf(stack, "    at ", at + 7)) {
      count++;
    }
    return count;
  }

  // `compiling`: the script's own evaluation failed, so a parse position is a syntax error.
  function fail(record, error, compiling) {
    if (record.state === "failed") return;
    record.state = "failed";
    record.limit = observedLimit(error);
    let failure;
    try {
      failure = loadErrors().report(error, 0);
    } catch {
      // Out of memory, most likely: say what can still be said.
      failure = { __proto__: null, name: "InternalError", message: "out of memory", stack: "" };
      try {
        failure = { __proto__: null, name: String(error.name), message: String(error.message),
          stack: "" };
      } catch {}
    }
    failure.compile = compiling === true;
    record.failure = failure;
  }

  function begin(record, main, argument) {
    if (typeof main !== "function") {
      record.state = "finished";
      return;
    }
    let value;
    try {
      value = main(argument);
    } catch (error) {
      fail(record, error);
      return;
    }
    record.state = "running";
    settled(record, value);
  }

  // The running activation `record` ends with what its function returned, `value`.
  function settled(record, value) {
    if (value === null || (typeof value !== "object" && typeof value !== "function")) {
      finish(record, value); // a plain value: Promise.resolve would only defer this to a job
      return;
    }
    Promise.resolve(value).then((result) => finish(record, result),
      (error) => fail(record, error));
  }

  function finish(record, value) {
    if (record.state !== "running") return;
    record.state = "finished";
    record.result = value;
  }

  // Script mode: the source ends with a line whose value is `main` (see javascript.py).
  function run(source) {
    let main;
    try {
      main = indirectEval(source);
    } catch (error) {
      fail(activations[0], error, true);
      return;
    }
    begin(activations[0], main, config.args);
  }

  // Module mode: `evaluation` settles when the module's top level is done.
  function module(evaluation) {
    evaluation.then(moduleDone, (error) => fail(activations[0], error));
  }

  function moduleDone() {
    const key = Symbol.for("polyspell.main");
    const main = globalThis[key];
    delete globalThis[key];
    begin(activations[0], config.library ? exported : main, config.args);
  }

  // A tools file: the functions it assigned to the global `exports` are its tools; the
  // load's result is their names.
  function library(source) {
    try {
      indirectEval(source);
    } catch (error) {
      fail(activations[0], error, true);
      return;
    }
    begin(activations[0], exported, undefined);
  }

  function exported() {
    const table = globalThis.exports;
    if (table === null || typeof table !== "object") {
      throw new TypeError("a JavaScript tools file must keep its functions in the object `exports`");
    }
    return Object.keys(table).filter((name) => typeof table[name] === "function").sort();
  }

  // Call the exported function `name` as activation `id` (params: JSON text). The answer:
  // "", or, when the call finished at once with a plain number, boolean or null, that value
  // itself (what poll would say of it: no console line, no request). Python takes it only
  // if no job runs after it (a job can print, call a tool...), else it polls: the call's
  // record is made then, of `fastId` and `fastResult` (see recordOf), not for every call.
  function callExport(id, name, params) {
    const table = globalThis.exports;
    const fn = table !== null && typeof table === "object" ? table[name] : undefined;
    if (typeof fn !== "function") {
      fail(activations[id] = activation(), new TypeError(`exports.${name} is not a function`));
      return "";
    }
    const argument = parse(params);
    let value;
    try {
      value = fn(argument);
    } catch (error) {
      fail(activations[id] = activation(), error);
      return "";
    }
    const type = typeof value;
    if (type === "number" ? value - value === 0
      : type === "boolean" || value === null || value === undefined) {
      if (queue === "" && output.length === 0) {
        fastId = id;
        fastResult = value === undefined ? null : value;
        return fastResult;
      }
    }
    const record = activations[id] = activation();
    record.state = "running";
    settled(record, value);
    return "";
  }

  // The record of activation `id`, made from callExport's answer if it is the last one.
  function recordOf(id) {
    if (id === fastId) {
      fastId = -1;
      const record = activations[id] = activation();
      record.state = "finished";
      record.result = fastResult;
    }
    return activations[id];
  }

  // Settle request `id`. `how`: 0 resolve with `value` itself (a number, string, boolean or
  // null: unguarded code, see the top), 1 resolve with the JSON text `value`, 2 reject with
  // the error of the envelope whose JSON text is `value`.
  function settle(id, how, value) {
    const entry = waiting[id];
    if (entry === undefined) return;
    delete waiting[id];
    if (how === 0) entry[0](value); // a resolve function, with no `then` to look up
    else if (how === 1) entry[0](parse(value));
    else {
      const envelope = parse(value);
      const error = loadErrors().fromEnvelope(envelope, entry[2], traceless);
      rejectWith(entry, error, envelope.category, envelope.kind);
    }
  }

  // Reject request `id` with the error of an envelope handed over flat, as
  // engines/javascript.py's _flat_error makes it of the usual one (JSON text costs more to
  // make in Python and to parse here, and the error is the same): from the second
  // argument, each level's name, category, kind, message, retryable, retry_after and ref,
  // then its fields (a count and that many keys and values, or -1 and their JSON text),
  // the cause's level after its error's.
  function settleError(id) {
    const entry = waiting[id];
    if (entry === undefined) return;
    delete waiting[id];
    const error = loadErrors().fromFlat(arguments, 1, entry[2], traceless);
    rejectWith(entry, error, arguments[2], arguments[3]);
  }

  function rejectWith(entry, error, category, kind) {
    if (category === "async_execution" && (kind === "task_cancelled" || kind === "task_timeout")) {
      abort(error);
    }
    entry[1](error);
  }

  // An error of class `cls` (javascript_errors.js's) with `message` (a string, or none),
  // made with no stack: quickjs writes one for every error it makes (a line per frame,
  // with printf: a sixth of what delivering an envelope cost), where an envelope's error
  // gets its call site's. Only for errors made while no script frame is on the stack
  // (settle): were the time limit to fire in between, its error would have no stack
  // either. Runs no script code: the engine's Error, read before any script ran, and a
  // class's own prototype (a class's `prototype` cannot be changed).
  function traceless(cls, message) {
    setTraceLimit(ERROR, 0);
    try {
      return construct(ERROR, message === undefined ? NO_ARGUMENTS : [message], cls);
    } finally {
      setTraceLimit(ERROR, STACK_TRACE_LIMIT);
    }
  }

  // ------------------------------------------------------------ cancellation

  // `signal`, like the AbortSignal of fetch(): the host cancels a task by failing its next
  // tool call with async_execution/task_cancelled (or task_timeout); the listeners run
  // first, then the call's promise rejects with that error.
  const listeners = [];
  const signal = {
    aborted: false,
    reason: undefined,
    onabort: null,
    addEventListener(type, listener) {
      if (type === "abort" && typeof listener === "function") listeners.push(listener);
    },
    removeEventListener(type, listener) {
      const at = listeners.indexOf(listener);
      if (type === "abort" && at >= 0) listeners.splice(at, 1);
    },
    throwIfAborted() {
      if (signal.aborted) throw signal.reason;
    },
  };

  function abort(reason) {
    if (signal.aborted) return;
    signal.aborted = true;
    signal.reason = reason;
    const event = { type: "abort", target: signal };
    for (const listener of [signal.onabort, ...listeners]) {
      if (typeof listener !== "function") continue;
      try {
        listener.call(signal, event);
      } catch (error) {
        log("abort listener failed:", error);
      }
    }
  }

  // Where the script stands, as the JSON array [state, console lines or 0, ...]:
  //   [0, lines, id, site, tool, params, ...]  suspended: four items per request (a
  //       request whose params have no JSON form has -id and, for params, the problem
  //       [message, type, path, memory] (see failure); a
  //       call site seen for the first time is [number, stack], later just its number)
  //   [5, lines, id, site, tool, params, ...]  the same, to be read with care (careful)
  //   [1, lines, result]                       finished
  //   [2, lines, report, limit]                failed (javascript_errors.js: report;
  //       limit: what observedLimit found, -1 when null was thrown)
  //   [3, lines, {message, type, path, memory}] finished with a result that has no JSON form
  //   [4, lines, 0]                            waiting on a promise with no request queued
  // Without `full` (unguarded code, see the top) it answers 0 instead of running the script's
  // code, as the JSON of a result can (toJSON).
  function poll(full, id) {
    const record = recordOf(id);
    let kind;
    let body;
    if (queue !== "") {
      kind = careful ? "[5," : "[0,";
      careful = false;
      body = queue;
      if (queued !== null) {
        append(queued, queue);
        body = joinList(queued, ",");
        queued = null;
      }
      queue = "";
    } else if (full !== true) {
      // unguarded: only a plain number, boolean or null result (no script code makes
      // their text; JSON writes a finite number as + does), anything else the long way
      if (record.state !== "finished") return 0;
      const result = record.result;
      const type = typeof result;
      if (type === "number" ? result - result !== 0
        : type !== "boolean" && result !== null && result !== undefined) return 0;
      kind = "[1,";
      body = result === undefined ? "null" : "" + result;
    } else if (record.state === "finished") {
      body = json(record.result, false, true);
      kind = "[1,";
      if (body === null) {
        kind = "[3,";
        body = stringify(failure(record.result, "result", false));
      }
    } else if (record.state === "failed") {
      kind = "[2,";
      body = stringify(record.failure) + "," + record.limit; // no prototypes: no toJSON runs
    } else {
      kind = "[4,";
      body = "0";
    }
    // A tools file's call is over once its end is told: its record goes (each call made
    // one, and kept it: about 400 bytes a call of the engine's memory limit, for good)
    if (id !== 0 && kind !== "[0," && kind !== "[5," && kind !== "[4,") delete activations[id];
    let lines = "0";
    if (output.length !== 0) { // after the result: its toJSON may have printed
      lines = "[" + joinList(output, ",") + "]";
      output = newList();
    }
    // Up to 512 characters, + makes flat strings (see flat)
    return lines.length + body.length < 500 ? kind + lines + "," + body + "]"
      : flat(kind, lines, ",", body, "]");
  }

  // The parts as one flat string: quickjs-ng makes a rope of `a + b` when b is longer than
  // 512 characters (or a than 8192), and its Python binding cannot read ropes (TypeError:
  // Unknown quickjs tag: -6). Unguarded code uses + on strings and never a template
  // literal, which calls String.prototype.concat.
  function flat(...parts) {
    return joinList(parts, "");
  }

  // The long string a poll's text names as MARK + i, flat, let go (see LONG_TEXT).
  function stashed(i) {
    const text = stash[i];
    delete stash[i];
    return flat(text);
  }

  // The console lines alone, after a failure the prelude could not see (a limit).
  function drain() {
    const text = flat("[", joinList(output, ","), "]");
    output = newList();
    return text;
  }

  // config: {file, args, tools: [[name, description]...], constructors: {name: category}};
  // the source of javascript_errors.js and the JSON of the message templates wait unused
  // until the first error.
  const TAKEN = ["setup", "run", "module", "library", "settle", "settleError", "poll", "drain",
    "stashed", "callExport"];

  function setup(text, errorsCode, catalog) {
    for (const name of TAKEN) delete globalThis[`polyspell$${name}`];
    config = parse(text);
    FILE = config.file;
    maxDepth = config.bounds[0];
    itemBytes = config.bounds[1];
    budget = config.bounds[2];
    MARK = typeof config.mark === "string" ? "\u0000" + config.mark + ":" : null;
    MARK_JSON = MARK === null ? null : "\"\\u0000" + config.mark + ":";
    errorsSource = errorsCode;
    catalogText = catalog;
    define("args", config.args);
    define("tools", new Proxy({ call, list }, toolsHandler));
    define("console", { log, info: log, warn: log, error: log, debug: log });
    define("signal", signal);
    define("recovery", Object.freeze({ retry, fallback }));
    if (config.library) define("exports", {});
    else define("hooks", Object.freeze({ beforeToolCall, afterToolCall, on }));
    // The error constructors are compiled when a script first touches one of them.
    for (const name of ["SpellError", "errors", ...Object.keys(config.constructors)]) {
      const get = () => loadErrors().globals[name];
      const set = (value) => (loadErrors(), define(name, value));
      Object.defineProperty(globalThis, name, { get, set, configurable: true });
    }
  }

  // (and those that could be innermost in the stack of an out-of-memory error)
  for (const fn of [call, tool, request, retry, fallback, errorReport, engineOwn, check, stop,
    json, stopJson, nestedJson, numbers, tooManyValues, splice, failure, format, log, fail, begin, run, moduleDone, poll,
    newList, append, flat, stashed, library, exported, callExport, abort, configError, hookName,
    register, beforeToolCall, afterToolCall, on, thenable, invoke, hookFailed, invalid, shown,
    actionOf, observeHooks, observerFailed, hooked, before, beforeAsync, decideBefore, early,
    send, after, afterFrom, afterAsync, afterFailure, decideAfter, settleCall, settle,
    settleError, rejectWith, traceless]) {
    Object.defineProperty(fn, "name", { value: `polyspell$${fn.name}` });
  }

  // Fixed for scripts: no prepareStackTrace (see the top), enough frames for call sites,
  // and stacks that name the file.
  Error.prepareStackTrace = undefined;
  Error.stackTraceLimit = 64;
  Object.defineProperty(Error, "prepareStackTrace", { get() {}, set() {}, configurable: false });
  Object.defineProperty(Error, "stackTraceLimit", { get: () => 64, set() {}, configurable: false });
  Object.defineProperty(Error.prototype, "stack", {
    get() {
      return clean(readStack(this));
    },
    set(value) {
      writeStack(this, value);
    },
    configurable: false,
  });

  // The binding also turns an uncaught error into text once a time limit has fired, with
  // no limit: the interrupt throws an InternalError, whose text no script may take over.
  // ToString looks up Symbol.toPrimitive first (on the whole prototype chain, up to
  // Object.prototype), then toString: both are the prelude's own on InternalError.prototype.
  function internalErrorText() {
    const message = this.message;
    return typeof message === "string" && message !== "" ? "InternalError: " + message
      : "InternalError";
  }
  Object.defineProperty(internalErrorText, "name", { value: "toString" });
  for (const [key, value] of [["name", "InternalError"], ["message", ""],
    ["toString", internalErrorText], [Symbol.toPrimitive, internalErrorText]]) {
    Object.defineProperty(InternalError.prototype, key,
      { value, writable: false, enumerable: false, configurable: false });
  }

  // InternalError is the engine's own (its limits, its interrupt): scripts cannot make one.
  // The global is not a constructor; `instanceof InternalError` still works.
  const internalError = () => {
    throw new TypeError("InternalError is the engine's own: scripts cannot make one");
  };
  Object.defineProperty(internalError, "name", { value: "polyspell$InternalError" });
  Object.defineProperty(internalError, "prototype", { value: INTERNAL_ERROR });
  Object.defineProperty(INTERNAL_ERROR, "constructor",
    { value: internalError, writable: false, enumerable: false, configurable: false });
  Object.defineProperty(globalThis, "InternalError",
    { value: internalError, writable: true, enumerable: false, configurable: true });

  // ------------------------------------------------------------------ modules

  // Modules the engine compiled and handed over (see javascript_modules.py): id -> record.
  // deps: specifier -> a module's id, or [message, envelope JSON or null, site] (not
  // loaded: not found, or refused). ES modules are linked and run as ES does (depth
  // first, each once, a cycle's modules seeing each other's hoisted functions), CommonJS
  // ones when required (cached: a cycle sees the partial exports, as in Node).
  const modules = { __proto__: null };

  // fns: the modules' functions, in the order of the metas that have a segment (text).
  function defineModules(fns, metasText) {
    const metas = parse(metasText);
    let next = 0;
    for (const meta of metas) {
      meta.fn = meta.segment === null ? null : fns[next++];
      meta.state = 0; // 0 new, 1 linked, 2 evaluated (or evaluating)
      meta.ns = null;
      meta.module = null;
      modules[meta.id] = meta;
      if (meta.segment !== null) append(segments, meta.segment);
    }
  }

  function loadFailure(dep) {
    if (dep[1] !== null) return loadErrors().fromEnvelope(parse(dep[1]), dep[2]);
    const error = new Error(dep[0]);
    if (dep[2] !== null) error.stack = clean(dep[2]);
    return error;
  }

  function dependency(record, specifier) {
    const dep = record.deps[specifier];
    if (typeof dep === "number") return modules[dep];
    throw loadFailure(dep === undefined ? [`module '${specifier}' was not loaded`, null, null]
      : dep);
  }

  function namespace() {
    const ns = Object.create(null);
    Object.defineProperty(ns, Symbol.toStringTag, { value: "Module" });
    return ns;
  }

  // Link `record` and what it imports (depth first), appending them to `order` as ES
  // evaluates them; each module's function runs up to its `await ready`, having handed
  // over getters of its exports.
  function linkModule(record, order) {
    if (record.state !== 0) return;
    record.state = 1;
    record.ns = namespace();
    for (const specifier of record.imports) linkModule(dependency(record, specifier), order);
    const scope = { __proto__: null };
    for (const local of Object.keys(record.bindings)) {
      const [specifier, name] = record.bindings[local];
      const dep = modules[record.deps[specifier]];
      // named polyspell$...: a binding read too early throws from here, a hidden frame
      Object.defineProperty(scope, local, name === "*"
        ? { get: function polyspell$namespace() { return dep.ns; } }
        : { get: function polyspell$binding() { return dep.ns[name]; } });
    }
    const load = function polyspell$import(specifier) { return importFrom(record, specifier); };
    load.meta = { url: record.file };
    scope.$impt$ = load;
    const inner = record.fn(scope);
    let go;
    const register = function polyspell$register(getters) {
      for (const name of Object.keys(getters)) {
        Object.defineProperty(record.ns, name, { get: getters[name], enumerable: true });
      }
    };
    register.ready = new Promise((resolve) => { go = resolve; });
    record.go = go;
    record.register = register;
    record.body = inner(register);
    record.body.catch(() => {}); // its failure is reported when its turn comes
    append(order, record);
  }

  function reexport(order) {
    for (let k = 0; k < order.length; k++) {
      const record = order[k];
      for (const name of Object.keys(record.reexports)) {
        const [specifier, imported] = record.reexports[name];
        const dep = modules[record.deps[specifier]];
        Object.defineProperty(record.ns, name, imported === "*"
          ? { get: function polyspell$namespace() { return dep.ns; }, enumerable: true }
          : { get: function polyspell$binding() { return dep.ns[imported]; }, enumerable: true });
      }
      for (const specifier of record.stars) {
        const dep = modules[record.deps[specifier]];
        for (const name of Object.keys(dep.ns)) {
          if (name === "default" || hasOwn(record.ns, name)) continue;
          Object.defineProperty(record.ns, name,
            { get: function polyspell$binding() { return dep.ns[name]; }, enumerable: true });
        }
      }
    }
  }

  // Run the linked modules of `order` one after the other (a module's top-level await
  // holds the next one back, as in ES); a module that throws stops them, its error
  // showing the imports that led to it.
  async function evaluateModules(order) {
    for (let k = 0; k < order.length; k++) {
      const record = order[k];
      if (record.state === 2) continue;
      record.state = 2;
      // what it imports first (an import() of the same modules may be running them)
      for (const specifier of record.imports) {
        const dep = modules[record.deps[specifier]];
        if (dep !== record && dep.done !== undefined) await dep.done;
      }
      record.go();
      record.done = record.body;
      try {
        await record.body;
      } catch (error) {
        if (record.chain !== "") {
          try {
            const raw = readStack(error);
            if (typeof raw === "string") writeStack(error, raw + record.chain);
          } catch {}
        }
        throw error;
      }
    }
  }

  // The script is an ES module that imports: link, run, then main (exported or not).
  function startModules(id) {
    const record = modules[id];
    const order = newList();
    try {
      linkModule(record, order);
      reexport(order);
    } catch (error) {
      fail(activations[0], error);
      return;
    }
    evaluateModules(order).then(function polyspell$modulesDone() {
      begin(activations[0], record.register.main, config.args);
    }, (error) => fail(activations[0], error));
  }

  // import(specifier) in module `record`: a module it already has, or a request of the
  // reserved kind "module" (the engine loads what it needs, then calls settleImport).
  function importFrom(record, specifier) {
    specifier = String(specifier);
    const dep = record.deps[specifier];
    if (typeof dep === "number") return loaded(modules[dep]);
    if (dep !== undefined) return Promise.reject(loadFailure(dep));
    captureStack(holder, importFrom);
    return request(["import", record.id, specifier], undefined, undefined, importFrom,
      holder.stack);
  }

  async function loaded(record) {
    if (record.state === 0) {
      const order = newList();
      linkModule(record, order);
      reexport(order);
      await evaluateModules(order);
    }
    await record.done;
    return record.ns;
  }

  // The engine's answer to an import(): the module's id, or why it is not there
  // ([message, envelope JSON or null]).
  function settleImport(id, found) {
    const entry = waiting[id];
    if (entry === undefined) return;
    delete waiting[id];
    if (typeof found === "number") {
      loaded(modules[found]).then(entry[0], entry[1]);
    } else {
      const [message, envelope] = parse(found);
      entry[1](loadFailure([message, envelope, entry[2]]));
    }
  }

  // CommonJS: the require of module `record` (0: the script itself, a global `require`).
  function requireFrom(record) {
    const require = function (specifier) {
      if (typeof specifier !== "string") {
        throw new TypeError(`require: the module name must be a string, got ${typeof specifier}`);
      }
      const dep = record.deps[specifier];
      if (dep === undefined) {
        throw new Error(`require(${stringify(specifier)}): polyspell loads modules before ` +
          "the script runs, from the require(\"...\") calls with a string literal in its " +
          "files, and this name was not one of them");
      }
      if (typeof dep !== "number") {
        captureStack(holder, require);
        throw loadFailure([dep[0], dep[1], holder.stack]);
      }
      const target = modules[dep];
      if (target.module !== null) return target.module.exports;
      const module = target.module = { exports: {}, id: target.file, filename: target.file,
        loaded: false, children: [], paths: [] };
      target.fn.call(module.exports, module.exports, requireFrom(target), module, target.file,
        target.dir);
      module.loaded = true;
      return module.exports;
    };
    Object.defineProperty(require, "name", { value: "polyspell$require" });
    return require;
  }

  function defineRequire(id) {
    define("require", requireFrom(modules[id]));
  }

  for (const fn of [linkModule, reexport, evaluateModules, startModules, importFrom, loaded,
    settleImport, loadFailure, dependency, relocate]) {
    Object.defineProperty(fn, "name", { value: `polyspell$${fn.name}` });
  }

  const API = { setup, run, module, library, callExport, settle, settleError, poll, drain,
    stashed, defineModules, startModules, settleImport, defineRequire };
  // What Python takes at every start, left as globals for a moment: the binding's get()
  // reads a global with no call into JS (each call lets the GIL go, and with many runs at
  // once each costs a thread switch). setup deletes them before any script code runs.
  for (const name of TAKEN) define(`polyspell$${name}`, API[name]);
  return (name) => API[name];
})();
