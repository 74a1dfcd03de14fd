"""polyspell's host: what users touch (``Host``, ``@tool``, the CLI).

``from host import Host, tool``. Names are imported on first use so that the CLI starts
without loading what a command does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from host.host import Host
    from host.tools import Tool, ToolRegistry, tool

_EXPORTS = {"Host": "host.host", "tool": "host.tools", "Tool": "host.tools",
            "ToolRegistry": "host.tools"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'host' has no attribute {name!r}")


__all__ = ["Host", "Tool", "ToolRegistry", "tool"]
