"""How bad an error is: an ordered scale, from debug noise to a failure that needs a restart."""

from __future__ import annotations

from enum import IntEnum


class Severity(IntEnum):
    """Ordered severity levels (``Severity.WARNING < Severity.ERROR``), spelled in lower case."""

    TRACE = 0  # debug information, not an actual error
    INFO = 1  # expected behaviour, worth knowing
    WARNING = 2  # potential issue; the operation can continue
    ERROR = 3  # the operation failed; the system can recover
    CRITICAL = 4  # a component failed and needs attention
    FATAL = 5  # the system needs a restart or a person

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Severity | str | int) -> Severity:
        """Read a severity from its name (any case), its number or itself."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                names = ", ".join(str(s) for s in cls)
                raise ValueError(f"unknown severity {value!r} (one of {names})") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        raise ValueError(f"severity must be a name or a number, not {type(value).__name__}")
