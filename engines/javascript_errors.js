// polyspell's JavaScript errors, compiled by the prelude on first use (an error reply, an
// uncaught error, a problem with data, or a script touching ToolError & co.), so that runs
// which never meet an error do not pay for compiling it.
//
// It evaluates to a function that takes the prelude's internals and returns:
//   globals      SpellError, one constructor per category (ToolError...), and `errors`
//   fromEnvelope a tool's error envelope as a native error, thrown at the call site
//   report       what Python needs to know about an uncaught value (bridge/javascript.py)
//   problem      why a value has no JSON form: {message: "params.f is a function", type}
(function (core) {
  "use strict";
  // (parse and setPrototypeOf: the prelude's, read before any script ran)
  const { json, clean, rawStack, setStack, names, maxDepth, parse, setPrototypeOf,
    OBJECT_PROTOTYPE, isNumberObject } = core;
  const stringify = JSON.stringify;
  const isArray = Array.isArray;
  const RAW = Symbol("raw"); // makes an error without reading an init object
  const TEMPLATED = new WeakMap(); // error -> its message, when made from the template
  // The constructors' own frames, innermost in the stack of every error they make.
  const OWN_FRAMES = new RegExp(`^(?: {4}at (?:SpellError|${Object.keys(names).join("|")}) ` +
    "\\(.*\n)+");
  const IDENT = /^[A-Za-z_$][\w$]*$/;
  const FIELD = /\{(\w+)\}/g;
  const NOT_FIELDS = new Set(["kind", "message", "cause", "category", "fields"]);
  let catalog = null; // {category: {kind: [template, defaults, float fields]}}

  // ------------------------------------------------------------------- messages

  // str() of a JSON-like value as Python prints it, so that messages match Python's.
  function pyString(value, float) {
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number") {
      return float && Number.isInteger(value) ? value.toFixed(1) : String(value);
    }
    if (typeof value === "string") return value;
    if (isArray(value)) return `[${value.map(pyRepr).join(", ")}]`;
    if (typeof value === "object") {
      return `{${Object.keys(value).map((k) => `${pyRepr(k)}: ${pyRepr(value[k])}`).join(", ")}}`;
    }
    return String(value);
  }

  function pyRepr(value) {
    return typeof value === "string" ? `'${value}'` : pyString(value, false);
  }

  // The message Python makes from the variant's template ("Tool timeout: {tool_name}...").
  function template(category, kind, fields) {
    catalog = catalog || JSON.parse(core.catalog);
    const entry = catalog[category] && catalog[category][kind];
    if (!entry) return category && kind ? `${category}/${kind}` : "";
    const [text, defaults, floats] = entry;
    let message = "";
    let last = 0;
    for (const match of text.matchAll(FIELD)) {
      const key = match[1];
      const source = key in fields ? fields : key in defaults ? defaults : null;
      message += text.slice(last, match.index);
      message += source ? pyString(source[key], floats.includes(key)) : match[0];
      last = match.index + match[0].length;
    }
    return message + text.slice(last);
  }

  // --------------------------------------------------------------- constructors

  // new AgentError({kind: "execution_failed", reason: "...", agent_id: "..."}): every key
  // but kind, message, cause (and category, fields) is a field; `fields: {...}` adds more.
  // Without a message, the message is the one Python would make.
  class SpellError extends Error {
    constructor(init) {
      if (init === RAW) {
        super();
        return;
      }
      const spec = init !== null && typeof init === "object" ? init : { message: init };
      const category = new.target.category || spec.category;
      const fields = {};
      for (const key of Object.keys(spec)) if (!NOT_FIELDS.has(key)) fields[key] = spec[key];
      if (spec.fields !== null && typeof spec.fields === "object") {
        Object.assign(fields, spec.fields);
      }
      const made = spec.message === undefined ? template(category, spec.kind, fields) : null;
      super(made === null ? String(spec.message) : made,
        "cause" in spec ? { cause: spec.cause } : undefined);
      this.category = category === undefined ? null : category;
      this.kind = spec.kind === undefined ? null : spec.kind;
      this.fields = fields;
      if (made !== null) TEMPLATED.set(this, made);
      setStack.call(this, clean(rawStack.call(this)).replace(OWN_FRAMES, ""));
    }

    get code() {
      return `${this.category}/${this.kind}`;
    }
  }

  function nameIt(cls, name) {
    Object.defineProperty(cls.prototype, "name", { value: name, writable: true, configurable: true });
  }

  nameIt(SpellError, "SpellError");
  const constructors = { SpellError };
  const byCategory = {};
  for (const [name, category] of Object.entries(names)) {
    const cls = { [name]: class extends SpellError {} }[name];
    Object.defineProperty(cls, "category", { value: category });
    nameIt(cls, name);
    constructors[name] = cls;
    byCategory[category] = cls;
  }

  // An error envelope from Python as the native error a script catches, with the stack of
  // the tool call it answers. `bare`, when given, makes the error of a class (the
  // prelude's traceless), else its constructor does.
  function fromEnvelope(envelope, site, bare) {
    const error = begun(envelope.name, envelope.category, envelope.message, bare);
    error.category = envelope.category;
    error.kind = envelope.kind;
    error.fields = envelope.fields || {};
    error.retryable = envelope.retryable === true;
    error.retry_after = typeof envelope.retry_after === "number" ? envelope.retry_after : null;
    if (envelope.cause) error.cause = fromEnvelope(envelope.cause, site, bare);
    error.ref = envelope.ref === undefined ? null : envelope.ref;
    error.stack = clean(site);
    return error;
  }

  // The same error from an envelope handed over flat (see settleError in the prelude): its
  // level from values[at], its cause's after it. Python sends only what fromEnvelope would
  // take as it is: texts, retryable a boolean, retry_after and ref numbers or null, the
  // fields' keys and values (JSON text where the mask's bit says so), or their JSON text.
  function fromFlat(values, at, site, bare) {
    const error = begun(values[at], values[at + 1], values[at + 3], bare);
    error.category = values[at + 1];
    error.kind = values[at + 2];
    const count = values[at + 7];
    let next = at + 9;
    let fields;
    if (count < 0) {
      fields = parse(values[at + 8]);
    } else { // own data properties, as JSON.parse makes them: no setter of a script's runs
      const mask = values[at + 8];
      fields = { __proto__: null };
      for (let i = 0; i < count; i++, next += 2) {
        fields[values[next]] = (mask >> i) & 1 ? parse(values[next + 1]) : values[next + 1];
      }
      setPrototypeOf(fields, OBJECT_PROTOTYPE);
    }
    error.fields = fields;
    error.retryable = values[at + 4];
    error.retry_after = values[at + 5];
    if (next < values.length) error.cause = fromFlat(values, next, site, bare);
    error.ref = values[at + 6];
    error.stack = clean(site);
    return error;
  }

  // The error an envelope's name (else its category) stands for, with its message (as
  // Error's constructor makes one of a string: writable, configurable, not enumerable).
  function begun(name, category, message, bare) {
    const cls = constructors[name] || byCategory[category] || SpellError;
    if (bare !== undefined && typeof message === "string") return bare(cls, message);
    const error = bare === undefined ? new cls(RAW) : bare(cls);
    Object.defineProperty(error, "message", { value: message, writable: true, configurable: true });
    return error;
  }

  // ------------------------------------------------------------------ reporting

  function show(value) {
    try {
      return String(value);
    } catch {
      return `[${typeName(value)}]`;
    }
  }

  function typeName(value) {
    if (value === null) return "null";
    const type = typeof value;
    if (type !== "object") return type;
    if (isArray(value)) return "array";
    const name = value.constructor && value.constructor.name;
    return typeof name === "string" && name && name !== "Object" ? name : "object";
  }

  function pathText(path) {
    let text = path[0];
    for (let i = 1; i < path.length; i++) {
      const key = path[i];
      if (typeof key === "number") text += `[${key}]`;
      else text += IDENT.test(key) ? `.${key}` : `[${stringify(key)}]`;
    }
    return text;
  }

  // The first part of `value` without a JSON form, as [reason, path, value], or null.
  function locate(value, path, strict, parents) {
    switch (typeof value) {
      case "string":
      case "boolean":
        return null;
      case "number":
        return Number.isFinite(value) ? null : ["number", path, value];
      case "undefined":
        return strict ? ["undefined", path, value] : null;
      case "object":
        if (value === null) return null;
        if (isNumberObject(value)) return locate(+value, path, strict, parents); // as JSON
        break;
      default:
        return [typeof value, path, value];
    }
    if (parents.includes(value)) return ["cycle", path, value];
    if (typeof value.toJSON === "function") {
      const replaced = value.toJSON();
      if (replaced !== value) return locate(replaced, path, strict, parents);
    }
    if (value instanceof Map || value instanceof Set || value instanceof Promise) {
      return ["class", path, value];
    }
    if (parents.length >= maxDepth) return ["deep", path, value];
    parents.push(value);
    for (const key of isArray(value) ? value.keys() : Object.keys(value)) {
      const found = locate(value[key], [...path, key], strict, parents);
      if (found) return found;
    }
    parents.pop();
    return null;
  }

  // Why `value` (tool parameters when `strict`) cannot cross as JSON: {message, type, path},
  // without a prototype (JSON.stringify of it runs no script code: no inherited toJSON).
  // `type` is the JS type found at `path`; for parameters, a cycle is "cycle".
  // `threw`: JSON.stringify threw `thrown` while it read `value`.
  function problem(value, root, strict, threw, thrown) {
    let found;
    try {
      found = strict && (value === null || typeof value !== "object" || isArray(value))
        ? ["not_object", [root], value] : locate(value, [root], strict, []);
    } catch (error) {
      found = ["error", [root], error];
    }
    let said;
    try {
      said = describe(found || ["error", [root], threw === true ? thrown
        : "its JSON form changed while it was read"], strict);
    } catch {
      said = { message: `${root} has no JSON form`, type: "error", where: root };
    }
    return { __proto__: null, message: String(said.message), type: String(said.type),
      path: String(said.where) };
  }

  function describe([reason, path, value], strict) {
    const where = pathText(path);
    const type = typeName(value);
    switch (reason) {
      case "number":
      case "undefined":
        return { message: `${where} is ${value}`, type, where };
      case "cycle":
        return { message: `cyclic object at ${where}`, type: strict ? "cycle" : type, where };
      case "deep":
        return { message: `${where} is nested more than ${maxDepth} levels deep`, type, where };
      case "class":
        return { message: `${where} is a ${type}${type === "Promise" ? " (a missing await?)" : ""}`,
          type, where };
      case "not_object":
        return { message: `${where} is ${value === null ? "null" : `${article(type)} ${type}`}, ` +
          "not an object", type, where };
      case "error":
        return { message: `${where} could not be read: ${show(value)}`, type: "error", where };
      default:
        return { message: `${where} is a ${reason}`, type, where };
    }
  }

  function article(word) {
    return /^[aeiou]/i.test(word) ? "an" : "a";
  }

  // JSON text parsed into objects and arrays without prototypes: the report that holds them
  // is turned into JSON again by poll, which must run no script code (no toJSON).
  function detached(key, value) {
    if (value !== null && typeof value === "object") setPrototypeOf(value, null);
    return value;
  }

  // An uncaught value, as bridge/javascript.py reads it: objects without prototypes (see
  // detached). What it says is the script's own (getters, toJSON and proxies may run):
  // it never decides whether a limit was hit (the prelude's observedLimit does).
  function report(error, depth) {
    let category, kind; // each read once: a getter may answer differently each time
    if (error !== null && typeof error === "object") {
      category = error.category;
      kind = error.kind;
    }
    const spellLike = typeof category === "string" && typeof kind === "string";
    let out;
    if (error instanceof Error) {
      let name = show(error.name);
      if (name === "Error" && error.constructor !== Error && error.constructor) {
        name = show(error.constructor.name) || name; // class MyError extends Error {}
      }
      // quickjs's own text, which bridge/javascript.py reads, unless the stack was set.
      const stack = Object.hasOwn(error, "stack") ? error.stack : rawStack.call(error);
      out = { __proto__: null, name, message: show(error.message),
        stack: typeof stack === "string" ? stack : "" };
    } else if (spellLike) { // a plain {category, kind, fields} object, as Lua scripts raise
      const message = typeof error.message === "string" ? error.message : undefined;
      out = { __proto__: null, name: "SpellError", message, stack: "" };
    } else {
      const text = json(error, false);
      return { __proto__: null, thrown: true, type: typeName(error),
        value: text === null ? null : parse(text, detached), text: text === null ? show(error) : null };
    }
    if (spellLike) {
      const fields = json(error.fields || {}, false);
      const ref = error.ref;
      out.spell = {
        __proto__: null,
        category,
        kind,
        message: TEMPLATED.get(error) === error.message ? null : out.message ?? null,
        fields: fields === null ? null : parse(fields, detached),
        problem: fields === null ? problem(error.fields, "fields", false).message : null,
        ref: typeof ref === "number" ? ref : null,
      };
    }
    if (error.cause !== undefined && depth < 16) out.cause = report(error.cause, depth + 1);
    return out;
  }

  // Functions that call script code (getters, toJSON, toString) hide from its stacks.
  for (const fn of [pyString, pyRepr, template, show, locate, problem, report]) {
    Object.defineProperty(fn, "name", { value: `polyspell$${fn.name}` });
  }

  const globals = { ...constructors, errors: { ...constructors } };
  return { globals, fromEnvelope, fromFlat, report, problem };
})
