"""The languages frames and errors may name: Python, the host, and the script languages.

``bridge`` imports no engine, so it does not know which script languages exist: it is
told. The ``engines`` package registers the language of each engine spec it declares
(``engines.register``), so any process that imports ``engines`` (``host`` does) knows
them. A process that only reads errors (``SpellError.from_json``) must import ``engines``
too before it reads frames or fields that name a script language.

Python and the host are always known. Every other language is a script's: its frames are
text a script can write, which is why :func:`is_script_language` says "not Python, not
the host" rather than "registered": an unknown language is treated as a script's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

PYTHON = "python"
HOST = "host"  # frames of the host itself, such as ``<tool call>``
HOST_LANGUAGES: tuple[str, ...] = (PYTHON, HOST)
# A script language's name: short, lower case, usable in a TOML key and a file name.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")

_script_languages: dict[str, None] = {}  # an ordered set, in the order of registration
_all: tuple[str, ...] = (PYTHON, HOST)  # every known language: python, scripts..., host


def register_language(name: str) -> None:
    """Make ``name`` a script language frames and errors may name (registering twice is
    harmless). ``ValueError`` for a name that is not a short lower-case word, or that is
    Python's or the host's."""
    if not isinstance(name, str) or not _NAME.match(name) or name in HOST_LANGUAGES:
        raise ValueError(f"a script language is named by a short lower-case word "
                         f"(not {', '.join(HOST_LANGUAGES)}): {name!r}")
    _script_languages[name] = None
    _refresh()


def unregister_language(name: str) -> None:
    """Forget a script language; frames and errors that name it no longer validate."""
    _script_languages.pop(name, None)
    _refresh()


def _refresh() -> None:
    global _all
    _all = (PYTHON, *_script_languages, HOST)


def script_languages() -> tuple[str, ...]:
    """The registered script languages, in the order they were registered."""
    return tuple(_script_languages)


def languages() -> tuple[str, ...]:
    """Every language a frame may name: ``python``, the script languages, ``host``."""
    return _all


def is_script_language(name: str) -> bool:
    """Whether a frame of this language is a script's (anything but Python or the host)."""
    return name not in HOST_LANGUAGES


def either(words: Iterable[str]) -> str:
    """``'a', 'b' or 'c'``: the choices a value may take, as pydantic words them."""
    quoted = [repr(word) for word in words]
    if len(quoted) < 2:
        return "".join(quoted) or "nothing"
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


class _LanguageName:
    """A field annotation: a ``str`` that pydantic accepts only when it is one of
    :meth:`choices` *when it is validated* (languages are registered at run time, so a
    ``Literal`` written here could not name them). Never instantiated."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The names a value may take now."""
        raise NotImplementedError

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import PydanticCustomError, core_schema

        def check(value: str) -> str:
            choices = cls.choices()
            if value in choices:
                return value
            # worded as pydantic words a Literal, which these fields were
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": either(choices)})

        return core_schema.no_info_after_validator_function(check, core_schema.str_schema())


class ScriptLanguageName(_LanguageName):
    """A registered script language (``lua``, ``javascript``...)."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(_script_languages)


class EngineLanguageName(_LanguageName):
    """A side of a crossing between engines: a registered script language or ``python``."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return (*_script_languages, PYTHON)
