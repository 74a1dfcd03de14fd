// polyspell's JavaScript prelude: evaluated in every fresh quickjs context before the
// script. It evaluates to `api(name)`, which hands the Python engine the few functions it
// calls (setup, run, module, settle, poll, drain). Nothing here calls Python: data crosses
// as JSON strings, both ways.
//
// Scripts get `args`, `tools` (each call records a request and returns a Promise),
// `console`, and `error.stack` with the real file name and without this prelude. The
// error constructors (SpellError, ToolError...) and the explanations of bad data live in
// javascript_errors.js, compiled on first use: quickjs compiles about 50 us of code per KB
// for every new engine, so this file keeps only what every run needs.
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
  const { get: rawStack, set: setStack } = Object.getOwnPropertyDescriptor(Error.prototype,
    "stack");
  const HIDDEN = /^ {4}at polyspell\$.*\n/gm; // prelude frames, in quickjs's stack text
  // A bare position before a native frame locates the text given to JSON.parse or eval.
  const FOREIGN = /^ {4}at <input>:\d+:\d+\n(?= {4}at .*\(native\)$)/gm;
  const BLOCKED = new Set(["then", "catch", "finally", "toJSON", "constructor"]);
  const waiting = new Map(); // request id -> [resolve, reject, stack of the call site]
  const toolFunctions = new Map();
  const sites = new Map(); // stack of a call site -> its number, so Python parses it once

  let FILE = "<script>";
  let config = null;
  let errorsSource = "";
  let catalogText = "{}";
  let errors = null; // what javascript_errors.js returns, once loaded
  let strict = false; // check: refuse undefined too (tool parameters)
  let bad = false; // check: found a value without a JSON form
  let lastId = 0;
  let queue = []; // requests (JSON text) not yet handed to Python
  let output = []; // console lines not yet handed to Python
  let state = "loading"; // loading | running | finished | failed
  let result;
  let failure = null;

  // A stack as scripts see it: the real file name, no prelude frames.
  function clean(text) {
    if (typeof text !== "string") return text;
    return text.replace(HIDDEN, "").replace(FOREIGN, "").split("<input>:").join(`${FILE}:`)
      .split("at <eval> (").join("at <script> (");
  }

  // JSON.stringify's replacer: notes what JSON would silently drop or change.
  function check(key, value) {
    switch (typeof value) {
      case "string":
      case "boolean":
        break;
      case "number":
        if (!Number.isFinite(value)) bad = true;
        break;
      case "object":
        if (value instanceof Map || value instanceof Set || value instanceof Promise) bad = true;
        break;
      case "undefined":
        if (strict) bad = true;
        break;
      default:
        bad = true; // function, bigint, symbol
    }
    return value;
  }

  // The JSON text of `value`, or null when part of it has no JSON form (a function, a
  // cycle, NaN...; and undefined when `refuseUndefined`): errors.problem() says which.
  function json(value, refuseUndefined) {
    strict = refuseUndefined;
    bad = false;
    try {
      const text = stringify(value, check);
      return bad ? null : text === undefined ? "null" : text;
    } catch {
      return null;
    }
  }

  function loadErrors() {
    if (errors === null) {
      errors = indirectEval(errorsSource)({ FILE, json, clean, rawStack, setStack,
        catalog: catalogText, names: config.constructors });
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
    const site = rawStack.call(new Error());
    const text = params === undefined ? "{}"
      : params !== null && typeof params === "object" && !isArray(params) ? json(params, true)
      : null;
    const problem = text === null ? loadErrors().problem(params, "params", true).message : null;
    const id = ++lastId;
    const { promise, resolve, reject } = Promise.withResolvers();
    waiting.set(id, [resolve, reject, site]);
    let number = sites.get(site);
    let stack = "null";
    if (number === undefined) {
      sites.set(site, (number = sites.size));
      stack = stringify(site);
    }
    queue.push(`{"id":${id},"tool":${stringify(tool)},"params":${text || "null"},"problem":${
      problem === null ? "null" : stringify(problem)},"site":${number},"stack":${stack}}`);
    return promise;
  }

  function tool(params) {
    return call(this, params);
  }

  const toolsHandler = {
    get(target, key) {
      if (key in target || typeof key !== "string" || BLOCKED.has(key)) return target[key];
      let fn = toolFunctions.get(key);
      if (fn === undefined) {
        fn = tool.bind(key); // a native wrapper: only `tool` itself shows in stacks
        Object.defineProperty(fn, "name", { value: key });
        toolFunctions.set(key, fn);
      }
      return fn;
    },
  };

  function list() {
    return config.tools.map(([name, description]) => ({ name, description }));
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
    output.push(values.map(format).join(" "));
  }

  // ----------------------------------------------------------------------- run

  // `compiling`: the script's own evaluation failed, so a parse position is a syntax error.
  function fail(error, compiling) {
    if (state === "failed") return;
    state = "failed";
    try {
      failure = loadErrors().report(error, 0);
    } catch {
      // Out of memory, most likely: say what can still be said.
      failure = { name: "InternalError", message: "out of memory", stack: "" };
      try {
        failure = { name: String(error.name), message: String(error.message), stack: "" };
      } catch {}
    }
    failure.compile = compiling === true;
  }

  function begin(main) {
    if (typeof main !== "function") {
      state = "finished";
      return;
    }
    let value;
    try {
      value = main(config.args);
    } catch (error) {
      fail(error);
      return;
    }
    state = "running";
    Promise.resolve(value).then(finish, fail);
  }

  function finish(value) {
    if (state !== "running") return;
    state = "finished";
    result = value;
  }

  // Script mode: the source ends with a line whose value is `main` (see javascript.py).
  function run(source) {
    let main;
    try {
      main = indirectEval(source);
    } catch (error) {
      fail(error, true);
      return;
    }
    begin(main);
  }

  // Module mode: `evaluation` settles when the module's top level is done.
  function module(evaluation) {
    evaluation.then(moduleDone, fail);
  }

  function moduleDone() {
    const key = Symbol.for("polyspell.main");
    const main = globalThis[key];
    delete globalThis[key];
    begin(main);
  }

  // Resolve request `id` with the JSON result, or reject it with the envelope's error.
  function settle(id, ok, text) {
    const entry = waiting.get(id);
    if (entry === undefined) return;
    waiting.delete(id);
    if (ok) entry[0](parse(text));
    else entry[1](loadErrors().fromEnvelope(parse(text), entry[2]));
  }

  // JSON of where the script stands, with the console lines printed since the last poll.
  function poll() {
    let text;
    if (queue.length) {
      text = `{"state":"suspended","requests":[${queue.join(",")}]`;
      queue = [];
    } else if (state === "finished") {
      const data = json(result, false);
      text = data !== null ? `{"state":"finished","result":${data}`
        : `{"state":"bad_result","error":${stringify(loadErrors().problem(result, "result", false))}`;
    } else {
      text = `{"state":"${state}","error":${stringify(failure)}`;
    }
    if (output.length) {
      text += `,"output":${stringify(output)}`;
      output = [];
    }
    return `${text}}`;
  }

  // The console lines alone, after a failure the prelude could not see (a limit).
  function drain() {
    const lines = output;
    output = [];
    return stringify(lines);
  }

  // config: {file, args, tools: [[name, description]...], constructors: {name: category}};
  // the source of javascript_errors.js and the JSON of the message templates wait unused
  // until the first error.
  function setup(text, errorsCode, catalog) {
    config = parse(text);
    FILE = config.file;
    errorsSource = errorsCode;
    catalogText = catalog;
    define("args", config.args);
    define("tools", new Proxy({ call, list }, toolsHandler));
    define("console", { log, info: log, warn: log, error: log, debug: log });
    // The error constructors are compiled when a script first touches one of them.
    for (const name of ["SpellError", "errors", ...Object.keys(config.constructors)]) {
      const get = () => loadErrors().globals[name];
      const set = (value) => (loadErrors(), define(name, value));
      Object.defineProperty(globalThis, name, { get, set, configurable: true });
    }
  }

  for (const fn of [call, tool, check, json, format, log, fail, begin, run, moduleDone, poll]) {
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
      return clean(rawStack.call(this));
    },
    set(value) {
      setStack.call(this, value);
    },
    configurable: false,
  });

  const API = { setup, run, module, settle, poll, drain };
  return (name) => API[name];
})();
