"""Tables on a terminal, drawn by rich (imported only when a terminal asks for one, so
that ``polyspell run`` starts without it); plain text everywhere else is the CLI's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can show a drawn table."""
    import os

    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def print_table(stream: TextIO, rows: Sequence[Sequence[str]], *, header: Sequence[str],
                color: bool, title: str | None = None,
                styles: Sequence[str | None] | None = None,
                right: Sequence[int] = ()) -> None:
    """``rows`` as a table under ``header`` on ``stream`` (a terminal), each row in its
    style (rich's: ``"red"``, ``"bold"``...) when ``color``. Cells are text, never markup:
    a script's or a tool's words show as they are."""
    from rich.table import Table
    from rich.text import Text

    console = rich_console(stream, color)
    table = Table(title=title, title_justify="left", show_edge=False, box=None,
                  header_style="bold" if color else None, pad_edge=False)
    for n, name in enumerate(header):
        table.add_column(name, justify="right" if n in right else "left", overflow="fold")
    for n, row in enumerate(rows):
        style = styles[n] if styles is not None else None
        table.add_row(*(Text(cell) for cell in row), style=style if color else None)
    console.print(table)


def rich_console(stream: TextIO, color: bool) -> Any:
    """A rich console on ``stream`` that never reads markup out of the text it prints,
    and colours as ``color`` says (the CLI decided it: ``--color``, NO_COLOR...)."""
    from rich.console import Console

    return Console(file=stream, no_color=not color, force_terminal=color,
                   color_system="standard" if color else None, highlight=False,
                   emoji=False, markup=False)
