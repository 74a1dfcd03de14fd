"""The prelude as quickjs byte code: read into each fresh context instead of compiled.

quickjs compiles about 37-50 us of CPU per KB of code, so compiling the prelude (63 KB)
was 2.2 ms of every JavaScript engine's start, most of a run's cost; reading the same
code as byte code (``JS_ReadObject``) and running its top level takes about 0.3 ms. The
binding (quickjs-ng 0.17) has no byte code API, but its shared library exports quickjs'
own C API, and its ``Context`` object holds the ``JSRuntime`` and ``JSContext`` pointers
right after the object header (module.c's ``RuntimeData``). This module calls that API
through ctypes, only where it can tell the layout is the one it was written against:

- a binding whose version is in :data:`KNOWN_BINDINGS` (its ``dist-info`` beside it),
  on a 64-bit platform, whose ``Context`` has the size of that ``RuntimeData``;
- for every context, the runtime's opaque pointer is the ``Context`` object itself (the
  binding sets it so) and the context's runtime is that runtime.

Anywhere else :func:`evaluate` answers None and the engine compiles the source, as it
always did. The byte code is made once per process, in memory, from the source text in a
context of its own that no script ever touches; it never comes from a file.

What the binding does around a call into JS and this does too: release the GIL (ctypes
does, so a start reads byte code while other threads run Python), update the stack top
for quickjs' stack check on this thread. What it does not: the binding's time limit (its
interrupt handler is private; engines.javascript_alarm installs one of its own, through
the library this module opens). No script code can run here (nothing but the prelude has
run in the context yet, and its top level is a fixed amount of work, measured with the
rest of the read), and the context's memory and stack limits, set before, apply. A read
or run that fails (out of memory) answers None: the caller must then drop the context,
whose state is unknown, and compile the source in a new one, which fails as it did.

Like the context itself, :func:`evaluate` is used on the context's own thread.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

try:  # the C module alone, as engines.javascript imports it
    import _quickjs as quickjs
except ImportError:  # pragma: no cover - a layout where only the package is importable
    import quickjs  # type: ignore[no-redef]

# Versions of the quickjs-ng binding whose Context layout was read (module.c) and tested.
KNOWN_BINDINGS: tuple[str, ...] = ("0.17.0.2",)
# sizeof(RuntimeData): the header (16), runtime and context pointers (16), has_time_limit
# with padding (8), time_limit (8), thread_state (8), InterruptData (16), callables (8)
_CONTEXT_SIZE = 80
_RUNTIME_AT, _CONTEXT_AT = 16, 24  # offsets of the two pointers in RuntimeData

_TAG_EXCEPTION = 6  # JS_TAG_EXCEPTION
_COMPILE_ONLY = 1 << 5  # JS_EVAL_FLAG_COMPILE_ONLY (with JS_EVAL_TYPE_GLOBAL, 0)
_BYTECODE = 1 << 0  # JS_WRITE_OBJ_BYTECODE, JS_READ_OBJ_BYTECODE
_FILE = b"<input>"  # the name the binding's eval gives every source (frames rely on it)
# The global the completion value is parked in for a moment, to reach Python as an Object
# through the binding's get(); deleted before anything else runs in the context.
_PARKED = b"polyspell$completion"


class _Value(ctypes.Structure):
    """A JSValue where it is not NaN-boxed (64-bit platforms): a union and a tag."""

    _fields_ = [("u", ctypes.c_uint64), ("tag", ctypes.c_int64)]


# Calls that take long enough to be worth releasing the GIL for, as the binding's calls
# into JS do (the others are a few pointer reads: a GIL hand-off costs more than they do)
_LONG = frozenset({"JS_Eval", "JS_ReadObject", "JS_EvalFunction"})

_lock = threading.Lock()
_lib: Any = None  # the binding's library with the signatures set, False when unusable
_codes: dict[str, bytes] = {}  # source -> its byte code


def _known_binding() -> bool:
    """Whether the binding installed is one whose ``Context`` layout this module knows."""
    if sys.maxsize <= 2**32 or getattr(quickjs.Context, "__basicsize__", 0) != _CONTEXT_SIZE:
        return False
    folder = os.path.dirname(getattr(quickjs, "__file__", "") or "")
    return any(os.path.isdir(os.path.join(folder, f"quickjs_ng-{version}.dist-info"))
               for version in KNOWN_BINDINGS)


def library() -> Any:
    """The binding's shared library with the signatures used here (and by
    engines.javascript_alarm), or None where its layout is not the one known."""
    if _lib is None:
        with _lock:
            if _lib is None:
                _load_library()
    return _lib or None


def _load_library() -> None:
    global _lib
    lib: Any = False
    if _known_binding():
        try:
            # PyDLL keeps the GIL through a call: only the long ones let it go (_LONG)
            lib, releasing = ctypes.PyDLL(quickjs.__file__), ctypes.CDLL(quickjs.__file__)
            p, v, i = ctypes.c_void_p, _Value, ctypes.c_int
            for name, restype, argtypes in (
                ("JS_GetRuntime", p, [p]),
                ("JS_GetRuntimeOpaque", p, [p]),
                ("JS_UpdateStackTop", None, [p]),
                ("JS_Eval", v, [p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, i]),
                ("JS_WriteObject", p, [p, ctypes.POINTER(ctypes.c_size_t), v, i]),
                ("JS_ReadObject", v, [p, ctypes.c_char_p, ctypes.c_size_t, i]),
                ("JS_EvalFunction", v, [p, v]),
                ("JS_GetGlobalObject", v, [p]),
                ("JS_SetPropertyStr", i, [p, v, ctypes.c_char_p, v]),
                ("JS_NewAtom", ctypes.c_uint32, [p, ctypes.c_char_p]),
                ("JS_DeleteProperty", i, [p, v, ctypes.c_uint32, i]),
                ("JS_FreeAtom", None, [p, ctypes.c_uint32]),
                ("JS_GetException", v, [p]),
                ("JS_FreeValue", None, [p, v]),
                ("js_free", None, [p, p]),
                ("JS_SetInterruptHandler", None, [p, p, p]),  # (engines.javascript_alarm)
            ):
                function = getattr(releasing if name in _LONG else lib, name)
                function.restype, function.argtypes = restype, argtypes
                setattr(lib, name, function)
        except (OSError, AttributeError):  # pragma: no cover - not the library known
            lib = False
    _lib = lib


def prepare() -> bool:
    """Open the binding's library now (for a process that will open no file later, see
    ``engines.confine``; the byte code itself is made in memory, on first use), and say
    whether byte code can be used here."""
    return library() is not None


def pointers(lib: Any, ctx: Any) -> tuple[int, int] | None:
    """The runtime and context pointers of a ``Context`` (``lib``: :func:`library`'s), if
    they check out."""
    if type(ctx) is not quickjs.Context:
        return None
    runtime = ctypes.c_void_p.from_address(id(ctx) + _RUNTIME_AT).value
    context = ctypes.c_void_p.from_address(id(ctx) + _CONTEXT_AT).value
    if not runtime or not context or lib.JS_GetRuntimeOpaque(runtime) != id(ctx):
        return None
    if lib.JS_GetRuntime(context) != runtime:
        return None
    return runtime, context


def _drop_exception(lib: Any, context: int) -> None:
    lib.JS_FreeValue(context, lib.JS_GetException(context))


def _compile(lib: Any, source: str) -> bytes | None:
    """``source``'s byte code, compiled in a context of its own (on this thread)."""
    scratch = quickjs.Context()
    found = pointers(lib, scratch)
    if found is None:
        return None
    runtime, context = found
    text = source.encode("utf-8")
    lib.JS_UpdateStackTop(runtime)
    function = lib.JS_Eval(context, text, len(text), _FILE, _COMPILE_ONLY)
    if function.tag == _TAG_EXCEPTION:
        _drop_exception(lib, context)
        return None
    size = ctypes.c_size_t()
    buffer = lib.JS_WriteObject(context, ctypes.byref(size), function, _BYTECODE)
    lib.JS_FreeValue(context, function)
    if not buffer:
        _drop_exception(lib, context)
        return None
    code = ctypes.string_at(buffer, size.value)
    lib.js_free(context, buffer)
    del scratch  # freed here, on the thread that made it
    return code


def code_of(source: str) -> bytes | None:
    """The byte code of ``source`` (global code), made on first use; None where this
    binding's layout is not known (see the module doc)."""
    code = _codes.get(source)
    if code is None:
        lib = library()
        if lib is None:
            return None
        with _lock:  # made once: other threads wait for it (about 2.5 ms)
            code = _codes.get(source)
            if code is None:
                code = _compile(lib, source)
                if code is None:
                    return None
                _codes[source] = code
    return code


def evaluate(ctx: Any, source: str) -> Any:
    """Run ``source`` (global code) in the fresh context ``ctx`` from its byte code, and
    answer its completion value as the binding converts it (an ``Object`` for a function).

    None: byte code cannot be used here, or reading or running it failed (out of memory):
    then ``ctx`` is in a state nobody knows and must be dropped (see the module doc).
    """
    lib = library()
    code = code_of(source) if lib is not None else None
    if code is None:
        return None
    found = pointers(lib, ctx)
    if found is None:
        return None
    runtime, context = found
    lib.JS_UpdateStackTop(runtime)
    function = lib.JS_ReadObject(context, code, len(code), _BYTECODE)
    if function.tag == _TAG_EXCEPTION:
        _drop_exception(lib, context)
        return None
    value = lib.JS_EvalFunction(context, function)  # takes the function
    if value.tag == _TAG_EXCEPTION:
        _drop_exception(lib, context)
        return None
    globals_ = lib.JS_GetGlobalObject(context)
    try:
        if lib.JS_SetPropertyStr(context, globals_, _PARKED, value) != 1:  # takes value
            _drop_exception(lib, context)
            return None
        try:
            completion = ctx.get(_PARKED.decode())
        except quickjs.JSException:
            return None
        atom = lib.JS_NewAtom(context, _PARKED)
        if not atom:
            _drop_exception(lib, context)
            return None
        deleted = lib.JS_DeleteProperty(context, globals_, atom, 0)
        lib.JS_FreeAtom(context, atom)
        if deleted != 1:
            _drop_exception(lib, context)
            return None
        return completion
    finally:
        lib.JS_FreeValue(context, globals_)
