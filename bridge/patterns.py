"""Recognise plain-string errors of older scripts as unified errors (the seed's parse_agent_error).

A script written before polyspell may ``error("Tool 'search' not found")`` or
``throw new Error("Agent not found: planner")``. A :class:`MessagePattern` is a regular
expression with named groups that maps such a message to a category and kind, the groups
becoming fields. The default registry holds one pattern per variant message template
(``Agent not found: {agent_id}`` reads back ``Agent not found: planner``) plus common
phrasings; add your own with ``patterns.add(...)``.
"""

from __future__ import annotations

import re
import string
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import (
    SpellError,
    field_annotations,
    mark_raised_by_script,
    variant_class,
    variants,
)
from bridge.frames import Frame


@dataclass(frozen=True)
class MessagePattern:
    """``regex`` (whole message, named groups = fields) -> ``category/kind``.

    ``first_word``, when set, is the word every message it matches starts with: the
    registry tries the pattern only on such messages.
    """

    regex: re.Pattern[str]
    category: str
    kind: str
    constants: Mapping[str, Any] = field(default_factory=dict)
    first_word: str | None = None

    def match(self, message: str) -> SpellError | None:
        """The error this message describes, or None (also when a field does not convert)."""
        found = self.regex.fullmatch(message) or self.regex.fullmatch(message.strip())
        if found is None:
            return None
        variant = variant_class(self.category, self.kind)
        fields = dict(self.constants)
        hints = variant.fields_model.model_fields
        for name, text in found.groupdict().items():
            if text is None or name not in hints:
                continue
            value = _convert(text, hints[name].annotation)
            if value is None:
                return None
            fields[name] = value
        try:
            return variant(message, **fields)
        except SpellError:
            return None  # the message fits, the fields do not: not this error


class PatternRegistry:
    """Ordered patterns; the first that matches wins. User patterns come first."""

    def __init__(self) -> None:
        self._patterns: list[MessagePattern] = []  # every pattern, in the order tried
        self._always: list[MessagePattern] = []  # tried on every message
        self._by_word: dict[str, list[MessagePattern]] = {}  # tried on messages so starting
        self._user_count = 0
        self._builtins_loaded = False
        # the built-in patterns tried on every message, as one regex that matches a message
        # when one of them does: most messages match none, and this looks once, not once
        # per pattern (None: not made yet; one matching everything when they cannot be joined)
        self._any_builtin: re.Pattern[str] | None = None

    def _load_builtins(self) -> None:
        # Compiling a hundred patterns costs milliseconds: only when first needed.
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for pattern in builtin_patterns():
                self.add_builtin(pattern)

    def add(self, regex: str | re.Pattern[str], category: str, kind: str,
            **constants: Any) -> MessagePattern:
        """Add a pattern, tried before the built-in ones: ``add(r"quota hit for (?P<provider>\\w+)",
        "provider", "quota_exceeded")``."""
        variant_class(category, kind)  # refuse an unknown category/kind now, not at match time
        pattern = MessagePattern(re.compile(regex), category, kind, constants)
        self._patterns.insert(self._user_count, pattern)
        self._always.insert(self._user_count, pattern)
        self._user_count += 1
        return pattern

    def add_builtin(self, pattern: MessagePattern) -> None:
        """Add a pattern after every other one."""
        self._patterns.append(pattern)
        if pattern.first_word is None:
            self._always.append(pattern)
            self._any_builtin = None
        else:
            self._by_word.setdefault(pattern.first_word, []).append(pattern)

    def match(self, message: str) -> SpellError | None:
        """The unified error the first matching pattern gives, or None."""
        self._load_builtins()
        always, users = self._always, self._user_count
        for pattern in always[:users]:
            err = pattern.match(message)
            if err is not None:
                return err
        builtins = always[users:]
        if builtins:
            any_builtin = self._any_builtin
            if any_builtin is None:
                any_builtin = self._any_builtin = _joined(builtins)
            if any_builtin.fullmatch(message) or any_builtin.fullmatch(message.strip()):
                for pattern in builtins:
                    err = pattern.match(message)
                    if err is not None:
                        return err
        for pattern in self._by_word.get(_first_word(message), ()):
            err = pattern.match(message)
            if err is not None:
                return err
        return None

    def __iter__(self) -> Iterator[MessagePattern]:
        self._load_builtins()
        return iter(self._patterns)


def template_pattern(variant: type[SpellError]) -> MessagePattern | None:
    """A pattern that reads back the variant's own message template, when one can."""
    literal_prefix, regex, names = "", [], []
    fields = field_annotations(variant)
    required = {name for name, (_, is_required) in fields.items() if is_required}
    for index, (literal, name, _spec, _conv) in enumerate(string.Formatter().parse(
            variant.template)):
        if index == 0:
            literal_prefix = literal
        regex.append(re.escape(literal))
        if name is not None:
            if name in names or not name.isidentifier():
                return None
            names.append(name)
            regex.append(f"(?P<{name}>.+?)" if name in required else f"(?P<{name}>.*?)")
    # A template that starts with a field would match anything; one that leaves out a
    # required field, or shows a list, cannot be read back.
    if len(literal_prefix.strip()) < 4 or not required <= set(names):
        return None
    if any(typing.get_origin(fields[n][0]) is list for n in names if n in fields):
        return None
    return MessagePattern(re.compile("".join(regex), re.DOTALL), variant.category,
                          variant.kind, first_word=_first_word(literal_prefix))


# Phrasings seen in scripts that predate polyspell, beyond the templates themselves.
COMMON_PHRASINGS: list[tuple[Any, ...]] = [
    (r"[Tt]ool '(?P<tool_name>[^']+)' not found", "tool", "not_found"),
    (r"[Tt]ool \"(?P<tool_name>[^\"]+)\" not found", "tool", "not_found"),
    (r"[Uu]nknown tool:? '?(?P<tool_name>[\w.-]+)'?", "tool", "not_found"),
    (r"[Aa]gent '(?P<agent_id>[^']+)' not found", "agent", "not_found"),
    (r"[Rr]ate limit(?:ed| exceeded)(?: (?:by|for|from) (?P<provider>[\w.-]+))?.*",
     "provider", "rate_limited", {"provider": "unknown"}),
    (r"(?:[Rr]equest )?[Tt]imed? ?out after (?P<duration>[\d.]+) ?s(?:econds)?"
     r"(?: calling (?P<tool_name>[\w.-]+))?", "tool", "timeout"),
]


# what may not be joined into one alternation: a group name (named twice there) is
# rewritten, but a back reference, an inline flag or an escaped "(" before "?" (which the
# rewriting could take for a group) makes the patterns stand alone
_GROUP_NAME = re.compile(r"\(\?P<\w+>")
_UNJOINABLE = re.compile(r"\(\?P=|\\[1-9]|\\g<|\(\?[aiLmsux]|\\\(\?")
_MATCH_ALL = re.compile(r".*", re.DOTALL)


def _joined(patterns: list[MessagePattern]) -> re.Pattern[str]:
    """One regex that fully matches a message when one of ``patterns`` does (their
    alternation, group names dropped); one matching everything when they cannot be
    joined, so that each is tried."""
    flags = {pattern.regex.flags for pattern in patterns}
    if len(flags) != 1 or any(_UNJOINABLE.search(p.regex.pattern) for p in patterns):
        return _MATCH_ALL
    # every "(?P<name>" rewritten must be a group (not text in a character class)
    if any(len(_GROUP_NAME.findall(p.regex.pattern)) != len(p.regex.groupindex)
           for p in patterns):
        return _MATCH_ALL
    try:
        return re.compile("|".join(f"(?:{_GROUP_NAME.sub('(?:', p.regex.pattern)})"
                                   for p in patterns), flags.pop())
    except re.error:
        return _MATCH_ALL


def _first_word(text: str) -> str:
    parts = text.split(None, 1)
    return parts[0] if parts else ""


def _convert(text: str, annotation: Any) -> Any:
    """A matched group as the field's type, or None when it does not convert."""
    kinds = typing.get_args(annotation) or (annotation,)
    for kind in kinds:
        try:
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
            if kind is bool:
                return {"true": True, "false": False}[text.lower()]
        except (ValueError, KeyError):
            continue
        if kind is str or kind is typing.Any:
            return text
    return text if not any(k in (int, float, bool) for k in kinds) else None


def builtin_patterns() -> list[MessagePattern]:
    """The common phrasings, then one pattern per readable variant template."""
    found = [MessagePattern(re.compile(regex), category, kind, constants[0] if constants else {})
             for regex, category, kind, *constants in COMMON_PHRASINGS]
    for variant in variants():
        pattern = template_pattern(variant)
        if pattern is not None:
            found.append(pattern)
    return found


patterns = PatternRegistry()
"""The process's registry: what engines hand their translators unless given another."""


def recognise(message: str, frames: list[Frame], patterns: PatternRegistry) -> SpellError | None:
    """The unified error a plain-string script error stands for by ``patterns``, placed at
    ``frames``; None when no pattern matches."""
    err = patterns.match(message)
    if err is not None:
        err.frames = frames
        mark_raised_by_script(err)  # a message that reads like a limit is not one
    return err
