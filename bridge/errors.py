"""The root of the unified error hierarchy and the machinery every variant shares.

An error is one *variant* (``tool/timeout``) of one *category* (``tool``). Variants are
declared as classes whose annotations are their fields::

    class ToolTimeout(ToolError, kind="timeout", retryable=True, retry_after=0.5,
                      template="Tool timeout: {tool_name} after {duration}s"):
        tool_name: str
        duration: float

``__init_subclass__`` turns those annotations into a strict pydantic model, registers the
variant under its category and kind, and attaches it to the category class
(``ToolError.Timeout``). The catalog, JSON, the script constructors and the translators
all read the same registry, so a variant declared once exists on every side.
"""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from time import time
from types import UnionType as _UnionType
from typing import TYPE_CHECKING, Any, ClassVar

from bridge.data import JSON_SCALARS, MAX_DEPTH, TooDeep, plain_json_copy, read_json
from bridge.frames import Frame, frame_from_data, is_internal, python_frames
from bridge.jsontext import finite_number, json_text
from bridge.severity import Severity

# Keyword arguments of the constructor; a variant's fields cannot use these names.
RESERVED_NAMES = frozenset(
    {"message", "kind", "category", "severity", "retryable", "retry_after", "context",
     "frames", "cause", "fields"}
)
JSON_KEYS = ("category", "kind", "message", "severity", "retryable", "retry_after", "fields",
             "frames", "cause", "context")
MAX_CAUSE_DEPTH = 64
# How deeply error JSON may nest: a cause chain MAX_CAUSE_DEPTH long whose innermost error
# holds script data (up to bridge.data.MAX_DEPTH) in a field, in context, frames and so on.
MAX_JSON_DEPTH = MAX_CAUSE_DEPTH + MAX_DEPTH + 8
_CONTEXT_LOCK = threading.Lock()  # an error's context is made once, whichever thread asks
# an error's lazy frames are kept once, and never over frames set meanwhile (SpellError.frames)
_FRAMES_LOCK = threading.Lock()
# How many updates of an error's context wait to be read (SpellError.update_context): an
# error crosses one boundary per level of tools-file calls, and more only when a tool
# raises one instance again and again (then they are applied, not kept).
MAX_CONTEXT_UPDATES = 16

if TYPE_CHECKING:
    from pydantic import BaseModel

    from bridge.context import ErrorContext

_CATEGORIES: dict[str, type[SpellError]] = {}
_VARIANTS: dict[tuple[str, str], type[SpellError]] = {}


class Json:
    """Marker for a field that holds any JSON value (pydantic's ``JsonValue`` when validated).

    A marker rather than pydantic's type itself, so that declaring the hierarchy does not
    import pydantic: a run that raises nothing never pays for it.
    """


def camel(snake: str) -> str:
    """``cross_engine_coordination`` -> ``CrossEngineCoordination``."""
    return "".join(part.capitalize() for part in snake.split("_"))


class _LazyFieldsModel:
    """A variant's strict pydantic model of its fields, built on first use.

    Building a hundred models when ``bridge`` is imported would cost every command
    (``polyspell run`` included) about 50 ms; most runs touch a handful of variants.
    """

    def __get__(self, obj: object, owner: type[SpellError]) -> type[BaseModel]:
        model = owner.__dict__.get("_fields_model")
        if model is None:
            from pydantic import ConfigDict, JsonValue, create_model

            hints = typing.get_type_hints(owner)
            definitions = {
                name: (JsonValue if hints[name] is Json else hints[name], default)
                for name, default in getattr(owner, "_field_defaults", {}).items()}
            model = create_model(
                f"{owner.__name__}Fields", **definitions,
                __config__=ConfigDict(strict=True, extra="forbid", defer_build=True,
                                      allow_inf_nan=False))  # fields are JSON data
            owner._fields_model = model
        return model


class SpellError(Exception):
    """Root of every error polyspell raises or translates, in any language.

    Construct a variant with its fields (``ToolError.Timeout(tool_name="search",
    duration=2.0)``), or a category with a kind (``ToolError(kind="timeout", ...)``).
    Missing, unknown or wrongly typed fields raise ``bridge/invalid_error``.
    """

    category: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    template: ClassVar[str] = "{message}"
    script_name: ClassVar[str] = ""  # the constructor's name inside scripts, e.g. ToolError
    wrap_kind: ClassVar[str] = ""  # the kind SpellError.wrap() uses for this category
    default_severity: ClassVar[Severity] = Severity.ERROR
    default_retryable: ClassVar[bool] = False
    default_retry_after: ClassVar[float | None] = None
    fields_model: ClassVar[_LazyFieldsModel] = _LazyFieldsModel()  # fields as a pydantic model

    fields: dict[str, Any]
    message: str
    severity: Severity

    def __init_subclass__(
        cls,
        *,
        category: str | None = None,
        kind: str | None = None,
        template: str | None = None,
        severity: Severity | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        wrap_kind: str | None = None,
        script_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if category is not None:
            _register_category(cls, category, script_name, wrap_kind)
        if template is not None:
            cls.template = template
        if severity is not None:
            cls.default_severity = severity
        if retryable is not None:
            cls.default_retryable = retryable
        if retry_after is not None:
            cls.default_retry_after = retry_after
        if kind is not None:
            _register_variant(cls, kind)

    def __new__(cls, *args: Any, **kwargs: Any) -> SpellError:
        if not cls.kind:  # a category (or the root): dispatch on kind=
            cls = variant_class(cls.category or kwargs.get("category"), kwargs.get("kind"))
        return super().__new__(cls)

    def __init__(
        self,
        message: str | None = None,
        /,
        *,
        kind: str | None = None,
        category: str | None = None,
        severity: Severity | str | int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        context: ErrorContext | None = None,
        frames: Iterable[Frame] | None = None,
        cause: BaseException | None = None,
        **fields: Any,
    ) -> None:
        if (kind or self.kind) != self.kind or (category or self.category) != self.category:
            raise _invalid(self.code, f"{category or self.category}/{kind or self.kind} "
                           f"does not match the class {type(self).__name__}", "kind")
        self._made(_validate_fields(type(self), fields), message, severity, retryable,
                   retry_after, context, None if frames is None else list(frames), cause)

    # What an error holds until it is given otherwise (class attributes: an error made
    # without them sets none of them, and its dict stays small).
    # (no annotations: a class's annotations are its fields)
    _retryable = None  # bool | None
    _retry_after = None  # float | None
    _context = None  # ErrorContext | None
    # what to do to the context when it is next read, in order (see update_context)
    _context_updates = None  # list[Callable[[ErrorContext], ErrorContext]] | None
    _frames = None  # list[Frame] | None
    # a Python traceback whose frames are this error's, read on first use (see wrap)
    _frames_from = None  # TracebackType | None
    _cause_view = None  # SpellError | None
    # whether SpellError.__new__ makes this variant with Exception.__new__ (no base after
    # SpellError has a __new__ of its own: OSError, a mixin's), set as it is registered;
    # SpellError.wrap's shortcut calls Exception.__new__ only then (see _wrapped)
    _exception_new = False

    def _made(self, fields: dict[str, Any], message: str | None,
              severity: Severity | str | int | None = None, retryable: bool | None = None,
              retry_after: float | None = None, context: ErrorContext | None = None,
              frames: list[Frame] | None = None, cause: BaseException | None = None) -> None:
        """The constructor's work once ``fields`` are validated (what
        :func:`_validate_fields` returns): :func:`_wrapped` makes an error with fields it
        knows are valid through here, without the keyword arguments' binding."""
        self.fields = fields
        if message is None:
            message = self.default_message()
        super().__init__(message)
        self.message = message
        self.severity = self.default_severity if severity is None else Severity.parse(severity)
        if retryable is not None:
            self._retryable = retryable
        if retry_after is not None:
            self._retry_after = retry_after
        if context is not None:
            self._context = context
        self._created = time()
        if frames is not None:
            self._frames = frames
        if cause is not None:
            self.__cause__ = cause

    def default_message(self) -> str:
        """The message of an error made without one: the variant's template, filled in
        with its fields (a variant may say more)."""
        return self.template.format_map(self.fields)

    # -- properties -------------------------------------------------------------------

    @property
    def retryable(self) -> bool:
        """Whether trying again may succeed (transient errors: timeouts, rate limits...)."""
        return self.default_retryable if self._retryable is None else self._retryable

    @property
    def retry_after(self) -> float | None:
        """Suggested delay in seconds before a retry, when the error is retryable."""
        return self.default_retry_after if self._retry_after is None else self._retry_after

    @property
    def requested_retry_after(self) -> float | None:
        """The ``retry_after`` this error was given (a ``Retry-After`` header, a breaker's
        time left), not its kind's default: the floor a retry policy keeps to."""
        return self._retry_after

    @property
    def context(self) -> ErrorContext:
        """Where, when and in what the error happened (made on first use)."""
        context = self._context
        if context is None or self._context_updates is not None:
            with _CONTEXT_LOCK:  # two threads (a run's, the observers') make one context
                context = self._context
                if context is None:
                    from bridge.context import ErrorContext

                    context = ErrorContext(timestamp=datetime.fromtimestamp(self._created, UTC))
                updates, self._context_updates = self._context_updates, None
                for update in updates or ():
                    context = update(context)
                self._context = context
        return context

    @context.setter
    def context(self, value: ErrorContext) -> None:
        with _CONTEXT_LOCK:
            self._context, self._context_updates = value, None

    def update_context(self, update: Callable[[ErrorContext], ErrorContext]) -> None:
        """Replace the context with ``update(context)`` when it is next read, after the
        updates given before: the same context as ``err.context = update(err.context)``
        now, made only if someone reads it (a tool failure a script catches is seldom
        looked at in Python). ``update`` must only read the context it is given. At most
        :data:`MAX_CONTEXT_UPDATES` wait: the context is made when there are that many."""
        with _CONTEXT_LOCK:
            updates = self._context_updates
            if updates is None:
                self._context_updates = [update]
                return
            updates.append(update)
            if len(updates) < MAX_CONTEXT_UPDATES:
                return
        # an error whose context nobody reads (one instance a tool raises in every run of
        # a long-lived host): its updates, and what they hold, are not kept without bound
        self.context  # noqa: B018 - made now, with the updates given so far

    @property
    def context_made(self) -> ErrorContext | None:
        """The context if it was made (with every update given so far), else None: for
        a look that must not make one."""
        if self._context_updates is not None:
            return self.context
        return self._context

    @property
    def frames(self) -> list[Frame]:
        """The traceback, outermost first: the frames given, else where Python raised it."""
        pending = self._frames_from
        if pending is not None:  # wrapped: the exception's frames, read now (see wrap)
            made = python_frames(pending)
            with _FRAMES_LOCK:  # kept unless frames were set meanwhile (another thread)
                if self._frames_from is pending:
                    self._frames, self._frames_from = made, None
        if self._frames:
            return self._frames
        return python_frames(self.__traceback__)

    def own_frames(self) -> list[Frame]:
        """:attr:`frames` without polyspell's own and its machinery's
        (:func:`bridge.frames.is_internal`): where a tool raised it, as a tool boundary
        keeps it. Frames read from a traceback are walked without making those left out
        (a refusal raised inside the pipeline has only such frames)."""
        pending = self._frames_from
        if pending is None and self._frames:
            return [frame for frame in self._frames if not is_internal(frame)]
        return python_frames(self.__traceback__ if pending is None else pending,
                             internal=False)

    @frames.setter
    def frames(self, value: Iterable[Frame]) -> None:
        value = list(value)
        with _FRAMES_LOCK:  # (see the getter: a late reader's frames do not replace these)
            self._frames, self._frames_from = value, None

    @property
    def cause(self) -> SpellError | None:
        """The error this one was raised from, as a SpellError (plain exceptions wrapped)."""
        raw = self.__cause__
        if raw is None or isinstance(raw, SpellError):
            return raw
        if self._cause_view is None:
            # this error holds raw, so the view may read raw's frames when first asked
            self._cause_view = _wrapped(SpellError, raw, None, None, {}, held=True)
        return self._cause_view

    @property
    def code(self) -> str:
        """``category/kind``, the error's name in every language."""
        return f"{self.category}/{self.kind}"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{type(self).__name__}({args})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpellError.from_dict, (self.to_dict(),))

    @property
    def raised_by_script(self) -> bool:
        """Whether a script raised this error itself (see :func:`mark_raised_by_script`)."""
        context = self.context_made
        return context is not None and context.metadata.get(RAISED_BY) == "script"

    def chain(self) -> Iterator[SpellError]:
        """This error, then its cause, then that one's cause... (see :func:`cause_chain`)."""
        return iter(cause_chain(self).errors)

    # -- construction from other things -------------------------------------------------

    @classmethod
    def wrap(
        cls,
        exc: BaseException,
        category: str | type[SpellError] | None = None,
        kind: str | None = None,
        **fields: Any,
    ) -> SpellError:
        """Turn any exception into a SpellError, keeping its type name, message and frames.

        A SpellError comes back unchanged. Otherwise the category is the one given, the
        class this is called on (``ToolError.wrap(exc, tool_name=...)``) or ``runtime``;
        without ``kind``, the category's catch-all kind is used. A ``reason`` field left
        out is filled with ``Type: message``, and the exception becomes the cause (in
        ``runtime/python_exception`` it is the error itself).
        """
        return _wrapped(cls, exc, category, kind, fields)

    # -- JSON -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-ready data; see :meth:`from_dict` for the way back.

        JSON data in the RFC 8259 sense: a number that is not finite (a ``retry_after`` or
        context metadata given as NaN) is ``None``; fields never hold one.
        """
        walk = cause_chain(self)
        out: dict[str, Any] | None = None
        for err in reversed(walk.errors):
            data = err._own_dict()
            if out is None and walk.note:  # the last kept cause says where the chain was cut
                data["message"] = f"{data['message']} {walk.note}"
            data["cause"] = out
            out = data
        assert out is not None
        return out

    def _own_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the cause (``None``)."""
        return {
            "category": self.category,
            "kind": self.kind,
            "message": self.message,
            "severity": str(self.severity),
            "retryable": self.retryable,
            "retry_after": finite_number(self.retry_after),
            "fields": self.fields,
            "frames": [frame.to_dict() for frame in self.frames],
            "cause": None,
            # finite already: the context's models write non-finite floats as null
            "context": self.context.model_dump(mode="json"),
        }

    def to_text(self, *, verbose: bool = False, color: bool = False) -> str:
        """The polyglot traceback of this error and its causes, as people read it."""
        from bridge.render import render_text

        return render_text(self, verbose=verbose, color=color)

    def to_json(self, *, indent: int | None = None) -> str:
        """The error as one JSON object (keys: category, kind, message, severity, fields...).

        RFC 8259 JSON (see :mod:`bridge.jsontext` and :meth:`to_dict`), UTF-8 encodable
        even when a message holds a lone surrogate.
        """
        return json_text(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> SpellError:
        """Read back an error written by :meth:`to_json`; bad input raises ``bridge/...``."""
        try:
            data = read_json(text, MAX_JSON_DEPTH)
        except TooDeep as exc:
            raise _bad_json(f"error JSON {exc}", "$") from None
        except (ValueError, TypeError) as exc:
            raise _bad_json(f"not valid JSON ({exc})", "$") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any, *, _path: str = "$", _depth: int = 0) -> SpellError:
        """Build the error that ``data`` (as made by :meth:`to_dict`) describes."""
        if _depth > MAX_CAUSE_DEPTH:
            raise _bad_json(f"cause chain deeper than {MAX_CAUSE_DEPTH}", _path)
        if not isinstance(data, Mapping):
            raise _bad_json(f"expected an error object, got {_json_type(data)}", _path)
        unknown = sorted(set(data) - set(JSON_KEYS))
        if unknown:
            raise _bad_json(f"unknown key {unknown[0]!r}", f"{_path}.{unknown[0]}")
        for key in ("category", "kind"):
            if not isinstance(data.get(key), str):
                raise _bad_json(f"'{key}' must be a string", f"{_path}.{key}")
        category, kind = data["category"], data["kind"]
        if category not in _CATEGORIES:
            known = ", ".join(sorted(_CATEGORIES))
            raise _bad_json(f"unknown category {category!r} (known: {known})", f"{_path}.category")
        if (category, kind) not in _VARIANTS:
            known = ", ".join(sorted(k for c, k in _VARIANTS if c == category))
            raise _bad_json(f"unknown kind {kind!r} for category {category!r} (known: {known})",
                            f"{_path}.kind")
        variant = _VARIANTS[category, kind]
        fields = data.get("fields") or {}
        if not isinstance(fields, Mapping):
            raise _bad_json(f"'fields' must be an object, got {_json_type(fields)}",
                            f"{_path}.fields")
        taken = sorted(key for key in fields if key in _CONSTRUCTOR_KEYS)
        if taken:  # a field named like an argument of the constructor: no field of any kind
            raise _bad_json(f"unknown field {taken[0]!r}", f"{_path}.fields.{taken[0]}")
        message = _optional(data, "message", "string", _path)
        retry_after = _optional(data, "retry_after", "number", _path)
        if retry_after == variant.default_retry_after:
            retry_after = None  # its kind's default, not a delay asked for (same JSON)
        retryable = _optional(data, "retryable", "boolean", _path)
        try:
            severity = None if data.get("severity") is None else Severity.parse(data["severity"])
        except ValueError as exc:
            raise _bad_json(str(exc), f"{_path}.severity") from None
        frames = _read_frames(data.get("frames") or [], f"{_path}.frames")
        context = _read_context(data.get("context"), f"{_path}.context")
        cause = None
        if data.get("cause") is not None:
            cause = cls.from_dict(data["cause"], _path=f"{_path}.cause", _depth=_depth + 1)
        try:
            return variant(message, severity=severity, retryable=retryable,
                           retry_after=retry_after, context=context, frames=frames,
                           cause=cause, **fields)
        except SpellError as exc:
            field = exc.fields.get("field") or ""
            raise _bad_json(exc.fields.get("reason", exc.message),
                            f"{_path}.fields.{field}" if field else f"{_path}.fields") from None


# The keyword arguments of SpellError's constructor: never field names (from_dict passes
# the fields as keywords beside them).
_CONSTRUCTOR_KEYS = frozenset({"kind", "category", "severity", "retryable", "retry_after",
                               "context", "frames", "cause"})


# -- cause chains -----------------------------------------------------------------------

# Beyond MAX_CAUSE_DEPTH, how far a chain is followed only to count what was left out.
MAX_COUNTED = 100_000


class CauseChain(typing.NamedTuple):
    """An error and its causes, outermost first, as far as :func:`cause_chain` kept them.

    ``omitted`` counts the causes left out beyond the last kept one (a lower bound when
    more than ``MAX_COUNTED``); ``loops`` says the chain went on to an error already in it.
    """

    errors: list[SpellError]
    omitted: int
    loops: bool

    @property
    def note(self) -> str:
        """What the last kept error says about the cut ("" when nothing was cut)."""
        if self.omitted:
            more = "more than " if self.omitted >= MAX_COUNTED else ""
            loop = ", then it loops back to an earlier one" if self.loops else ""
            return f"[... {more}{self.omitted} more causes not shown{loop}]"
        if self.loops:
            return "[the cause chain loops back to an earlier error here]"
        return ""


def _wrapped(cls: type[SpellError], exc: BaseException, category: str | type[SpellError] | None,
             kind: str | None, fields: dict[str, Any], *, held: bool = False) -> SpellError:
    """:meth:`SpellError.wrap`. The exception's frames are read when the error's frames
    are first asked for (a cause's view often never is: a script's envelope has no
    frames) where the exception stays alive anyway: it is the error's cause, or ``held``
    by whoever asked; else they are read at once, so that no traceback (and the frames'
    locals) is kept only for them."""
    if isinstance(exc, SpellError):
        return exc
    if category is None:
        category = cls.category or "runtime"
    elif isinstance(category, type):
        category = category.category
    variant = variant_class(category, kind or category_class(category).wrap_kind)
    valid = False  # whether fields are as validation would return them
    if variant.kind == "python_exception" and variant.category == "runtime":
        # a view made here (a cause's): two strings, in the model's order
        valid = not fields and variant.__dict__.get("_scalar_plan") == _VIEW_PLAN
        if "exception_type" not in fields:
            fields["exception_type"] = exception_type_name(exc)
        if "exception_message" not in fields:
            fields["exception_message"] = exception_message(exc)
        cause = exc.__cause__
    else:
        if "reason" not in fields and "reason" in getattr(variant, "_field_defaults", ()):
            fields["reason"] = describe_exception(exc)  # (only if not given: str() runs once)
        cause = exc
    lazy = held or cause is exc
    frames = [] if lazy else python_frames(exc.__traceback__)
    if variant.__init__ is SpellError.__init__ and variant.__new__ is SpellError.__new__ \
            and variant._exception_new and fields.keys().isdisjoint(_KEYWORDS):
        # the constructor's work without its keyword arguments (the same error)
        err = Exception.__new__(variant)
        err._made(fields if valid else _validate_fields(variant, fields), None,
                  frames=frames, cause=cause)
    else:
        err = variant(frames=frames, cause=cause, **fields)
    if lazy:
        err._frames_from = exc.__traceback__
    return err


# The constructor's keyword arguments that are not fields (see SpellError.__init__).
_KEYWORDS = RESERVED_NAMES - {"message", "fields"}
# runtime/python_exception's fields as _scalar_fields checks them (see _wrapped)
_VIEW_PLAN = (("exception_type", frozenset({str}), ...),
              ("exception_message", frozenset({str}), ""))


def cause_chain(err: SpellError, limit: int = MAX_CAUSE_DEPTH) -> CauseChain:
    """``err`` and at most ``limit`` causes: the one bounded, cycle-safe walk of a chain.

    Every consumer (``chain()``, ``to_dict()``, pickling, ``to_text()``, script envelopes)
    reads a chain through here, so a tool exception that is its own cause, or one 3,000
    causes deep, costs a bounded amount and never recurses. A plain exception in the chain
    is seen through its SpellError view (:attr:`SpellError.cause`); loops are found by the
    identity of the raw ``__cause__`` objects, which those views share.
    """
    errors = [err]
    seen = {id(err)}
    raw = _raw_cause(err)
    while raw is not None and id(raw) not in seen and len(errors) <= limit:
        seen.add(id(raw))
        view = errors[-1].cause
        if view is None:  # a __cause__ that is no exception
            raw = None
            break
        errors.append(view)
        seen.add(id(view))
        raw = _raw_cause(view)
    omitted = 0
    while raw is not None and id(raw) not in seen and omitted < MAX_COUNTED:
        seen.add(id(raw))
        omitted += 1
        raw = _raw_cause(raw)
    return CauseChain(errors, omitted, raw is not None and id(raw) in seen)


def _raw_cause(exc: BaseException) -> BaseException | None:
    cause = getattr(exc, "__cause__", None)
    return cause if isinstance(cause, BaseException) else None


# -- registry ---------------------------------------------------------------------------


def _register_category(
    cls: type[SpellError], category: str, script_name: str | None, wrap_kind: str | None
) -> None:
    if category in _CATEGORIES:
        raise TypeError(f"category {category!r} is already declared by "
                        f"{_CATEGORIES[category].__name__}")
    cls.category = category
    cls.kind = ""
    cls.script_name = script_name or f"{camel(category)}Error"
    cls.wrap_kind = wrap_kind or ""
    _CATEGORIES[category] = cls


def _register_variant(cls: type[SpellError], kind: str) -> None:
    if not cls.category:
        raise TypeError(f"{cls.__name__} declares kind {kind!r} but derives from no category")
    if (cls.category, kind) in _VARIANTS:
        raise TypeError(f"{cls.category}/{kind} is already declared by "
                        f"{_VARIANTS[cls.category, kind].__name__}")
    cls.kind = kind
    cls._field_defaults = _collect_fields(cls)
    cls._exception_new = super(SpellError, cls).__new__ is Exception.__new__
    _VARIANTS[cls.category, kind] = cls
    setattr(_CATEGORIES[cls.category], camel(kind), cls)


def _collect_fields(cls: type[SpellError]) -> dict[str, Any]:
    """The variant's own field names with their defaults (``...`` when required)."""
    fields: dict[str, Any] = {}
    for name, annotation in inspect.get_annotations(cls).items():
        if typing.get_origin(annotation) is ClassVar or "ClassVar" in str(annotation):
            continue
        if name in RESERVED_NAMES or name.startswith("_"):
            raise TypeError(f"{cls.__name__}: field name {name!r} is reserved")
        fields[name] = cls.__dict__.get(name, ...)
        if fields[name] is not ...:
            delattr(cls, name)  # fields live in err.fields, never as class attributes
    return fields


# context.metadata key, "script" for a security or resource error a script raised itself.
RAISED_BY = "raised_by"
_OBSERVED_CATEGORIES = frozenset({"security", "resource"})
_OBSERVED_CODES = frozenset({"script/resource_exhaustion", "script/security_violation"})


def claims_observation(err: SpellError) -> bool:
    """Whether the error's code says the host saw it happen: a sandbox violation, a limit."""
    return err.category in _OBSERVED_CATEGORIES or err.code in _OBSERVED_CODES


def mark_raised_by_script(err: SpellError) -> SpellError:
    """Say that a script raised ``err`` itself, if its code claims what only the host sees.

    Scripts may raise security and resource errors (``errors.SecurityError{...}``, ``new
    ResourceError({...})``, or a message that reads like one), but such an error must not
    pass for one the host or the engine observed: its context says ``raised_by: script``,
    its text says so, and the CLI exits as for any script failure. Returns ``err``.
    """
    if claims_observation(err) and not err.raised_by_script:
        context = err.context
        err.context = context.model_copy(
            update={"metadata": {**context.metadata, RAISED_BY: "script"}})
    return err


def category_class(category: str | None) -> type[SpellError]:
    """The class of a category name; ``bridge/invalid_error`` when there is none."""
    try:
        return _CATEGORIES[category]  # type: ignore[index]
    except KeyError:
        raise _invalid(str(category), f"unknown category {category!r}; "
                       f"known: {', '.join(sorted(_CATEGORIES))}", "category") from None


def variant_class(category: str | None, kind: str | None) -> type[SpellError]:
    """The class of ``category/kind``; ``bridge/invalid_error`` when there is none."""
    category_class(category)
    if kind is None:
        raise _invalid(str(category), "name the kind of error (kind=...)", "kind")
    try:
        return _VARIANTS[category, kind]  # type: ignore[index]
    except KeyError:
        known = ", ".join(sorted(k for c, k in _VARIANTS if c == category))
        raise _invalid(f"{category}", f"unknown kind {kind!r}; known: {known}", "kind") from None


def field_defaults(variant: type[SpellError]) -> dict[str, Any]:
    """A variant's fields as ``name -> default``, with ``...`` for a required field."""
    return dict(getattr(variant, "_field_defaults", {}))


def field_annotations(variant: type[SpellError]) -> dict[str, tuple[Any, bool]]:
    """A variant's fields as ``name -> (annotation, required)``, without building pydantic
    models (cheap enough to call for every variant)."""
    hints = typing.get_type_hints(variant)
    return {name: (hints[name], default is ...)
            for name, default in field_defaults(variant).items()}


def categories() -> dict[str, type[SpellError]]:
    """Every category name with its class, in declaration order."""
    return dict(_CATEGORIES)


def variants(category: str | None = None) -> list[type[SpellError]]:
    """Every variant class (of one category, if named), in declaration order."""
    return [cls for (cat, _), cls in _VARIANTS.items() if category in (None, cat)]


# -- validation -------------------------------------------------------------------------


def _validate_fields(variant: type[SpellError], fields: dict[str, Any]) -> dict[str, Any]:
    plan = variant.__dict__.get("_scalar_plan", _UNPLANNED)
    if plan is _UNPLANNED:
        plan = _scalar_plan(variant)
    if plan is not None:
        checked = _scalar_fields(plan, fields)
        if checked is not None:
            return checked
    model = variant.fields_model
    try:  # model_validate() and model_dump() without their Python wrappers: same result
        validated = model.__pydantic_validator__.validate_python(fields)
        plain = variant.__dict__.get("_plain_fields")
        if plain is None:
            plain = _plain_fields(variant)
            variant._plain_fields = plain  # type: ignore[attr-defined]
        # fields of plain types: the validated model's own dict is what model_dump() gives
        # (pydantic made it for this model: lists and JSON values copied, defaults too)
        return validated.__dict__ if plain else model.__pydantic_serializer__.to_python(
            validated)
    except Exception as exc:
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        problems = exc.errors()
        # An unknown field (a typo) explains the missing one it was meant to be.
        first = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
        field = ".".join(str(part) for part in first["loc"])
        raise _invalid(f"{variant.category}/{variant.kind}",
                       _describe_problem(variant, first), field.split(".")[0]) from None


_PLAIN_TYPES = (str, int, float, bool, type(None), Json)


def _plain_fields(variant: type[SpellError]) -> bool:
    """Whether every field of ``variant`` is of a type that model_dump() gives back as
    validated: str, int, float, bool, None, JSON data, a Literal, a list or union of
    those, a language name (a str)."""
    from bridge.languages import _LanguageName

    def plain(annotation: Any) -> bool:
        if annotation in _PLAIN_TYPES or (isinstance(annotation, type)
                                          and issubclass(annotation, _LanguageName)):
            return True
        origin = typing.get_origin(annotation)
        if origin is typing.Literal:
            return all(type(value) in (str, int, bool) for value in typing.get_args(annotation))
        if origin in (list, typing.Union, _UnionType):
            return all(plain(arg) for arg in typing.get_args(annotation))
        return False

    return all(plain(annotation) for annotation, _ in field_annotations(variant).values())


_UNPLANNED = object()
# Exact types a field of this annotation takes as they are (strict mode: no coercion);
# for JSON fields only scalars (containers are left to pydantic).
_SCALAR_TYPES: dict[Any, frozenset[type]] = {
    str: frozenset({str}), int: frozenset({int}), float: frozenset({float}),
    bool: frozenset({bool}), Json: JSON_SCALARS,
}
_JSON_COPY_DEPTH = 32  # deeper lists and dicts in a JSON field are left to pydantic


def _scalar_plan(variant: type[SpellError]) -> tuple[tuple[str, frozenset[type], Any], ...] | None:
    """How :func:`_scalar_fields` checks ``variant``'s fields: ``(name, exact types taken,
    default)`` per field (``...``: required; a field of any other annotation takes no
    type: pydantic checks it), or None when one of its defaults is not a scalar of its
    own types (such a variant is left to pydantic). Kept on the class."""
    try:
        result = _planned(variant)
    except Exception:  # an annotation it cannot read or hash: left to pydantic, as before
        return None
    variant._scalar_plan = result
    return result


def _planned(variant: type[SpellError]) -> tuple[tuple[str, frozenset[type], Any], ...] | None:
    hints = typing.get_type_hints(variant)
    plan: list | None = []
    for name, default in getattr(variant, "_field_defaults", {}).items():
        annotation = hints[name]
        taken = _SCALAR_TYPES.get(annotation)
        if taken is None and typing.get_origin(annotation) in (typing.Union, _UnionType):
            parts = [_SCALAR_TYPES.get(arg) for arg in typing.get_args(annotation)]
            if all(part is not None or arg is type(None)
                   for part, arg in zip(parts, typing.get_args(annotation), strict=True)):
                taken = frozenset().union(*(part or {type(None)} for part in parts))
        taken = taken or frozenset()
        if default is not ... and not (type(default) in taken and (
                type(default) is not float or default - default == 0.0)):
            plan = None
            break
        plan.append((name, taken, default))
    return None if plan is None else tuple(plan)


def _scalar_fields(plan: tuple[tuple[str, frozenset[type], Any], ...],
                   fields: dict[str, Any]) -> dict[str, Any] | None:
    """What pydantic's strict validation and dump of the fields model return for
    ``fields``, when each value is a scalar of its field's exact taken (floats finite) and
    no name is unknown: the values themselves, in the model's order, defaults filled in.
    None when anything else is found (pydantic then validates, and says what is wrong)."""
    out = {}
    given = 0
    for name, taken, default in plan:
        value = fields.get(name, _UNPLANNED)
        if value is _UNPLANNED:
            if default is ...:
                return None
            out[name] = default
            continue
        kind = type(value)
        if kind not in taken:
            if taken is not JSON_SCALARS or (kind is not dict and kind is not list):
                return None
            value = plain_json_copy(value, _JSON_COPY_DEPTH)  # a copy, as pydantic's dump is
            if value is None:
                return None
        elif kind is float and value - value != 0.0:
            return None
        out[name] = value
        given += 1
    return out if given == len(fields) else None  # else an unknown name: pydantic says so


def _describe_problem(variant: type[SpellError], problem: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "missing":
        return f"missing field '{field}'"
    if problem["type"] == "extra_forbidden":
        known = ", ".join(variant.fields_model.model_fields) or "no fields"
        return f"unknown field '{field}' ({variant.category}/{variant.kind} takes {known})"
    got = problem.get("input")
    return f"field '{field}': {problem['msg']} (got {_json_type(got)} {_short(got)})"


def _invalid(error_type: str, reason: str, field: str = "") -> SpellError:
    return _VARIANTS["bridge", "invalid_error"](error_type=error_type, reason=reason, field=field)


def _bad_json(reason: str, path: str) -> SpellError:
    return _VARIANTS["bridge", "deserialization_failed"](reason=reason, path=path)


def _optional(data: Mapping[str, Any], key: str, expected: str, path: str) -> Any:
    """``data[key]`` when it is missing, null or of the JSON type ``expected``."""
    value = data.get(key)
    if value is None or _json_type(value) == expected:
        return value
    raise _bad_json(f"'{key}' must be a {expected}, got {_json_type(value)}", f"{path}.{key}")


def _read_frames(raw: Any, path: str) -> list[Frame]:
    if not isinstance(raw, list):
        raise _bad_json(f"bad frame: 'frames' must be an array, got {_json_type(raw)}", path)
    frames = []
    for index, item in enumerate(raw):
        try:
            frames.append(frame_from_data(item))
        except ValueError as exc:
            key = f".{exc.args[1]}" if len(exc.args) > 1 else ""
            raise _bad_json(f"bad frame: {exc.args[0]}", f"{path}[{index}]{key}") from None
    return frames


def _read_context(raw: Any, path: str) -> ErrorContext | None:
    if raw is None:
        return None
    from pydantic import ValidationError

    from bridge.context import ErrorContext

    try:
        return ErrorContext.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise _bad_json(f"bad context: {first['msg']}", f"{path}{where}") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exception_type_name(exc: BaseException) -> str:
    """``KeyError`` for builtins, ``package.module.Class`` for the rest, as Python prints it.

    Never fails: a class whose names cannot be read is named by ``type.__name__``.
    """
    cls = type(exc)
    try:
        module, name = cls.__module__, cls.__qualname__
        if type(name) is not str:
            raise TypeError("__qualname__ is not a string")
    except Exception:
        return type.__dict__["__name__"].__get__(cls)  # the C slot: no metaclass in between
    if module == "builtins" or type(module) is not str:
        return name
    return f"{module}.{name}"


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, never failing: Python's own ``<exception str() failed>`` when the
    exception cannot describe itself (its ``__str__`` raises, its ``args`` are broken...).

    A ``KeyboardInterrupt`` raised meanwhile is not swallowed.
    """
    try:
        text = str(exc)
        return text if type(text) is str else str.__str__(text)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return "<exception str() failed>"


def describe_exception(exc: BaseException, *, qualified: bool = True) -> str:
    """``Type: message`` for any exception, however broken (see :func:`exception_message`).

    ``qualified`` names the type with its module as :func:`exception_type_name` does;
    otherwise by its bare class name, as tool failures are described.
    """
    if qualified:
        name = exception_type_name(exc)
    else:
        name = type.__dict__["__name__"].__get__(type(exc))
    return f"{name}: {exception_message(exc)}"

