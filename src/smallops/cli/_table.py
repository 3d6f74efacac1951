"""Tables that fit the terminal: run ids and model pins are printed whole, other columns give way.

The width is the console's, which follows the terminal (or COLUMNS). A column that may be cut is
cut with an ellipsis, down to its floor; when even that does not fit, columns are hidden, least
needed first, and a line says which. Cells are plain text (never markup), one line each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.text import Text

from smallops.cli import _common

GAP = 2  # spaces between columns
SEPARATOR = " · "  # between the parts of a title, where a narrow terminal may break it


@dataclass(frozen=True)
class Column:
    """A column, whole by default. `cut_to` lets it be cut down to that many characters;
    `hide` lets it be hidden when the others do not fit (the highest rank goes first)."""

    name: str
    cut_to: int | None = None
    hide: int = 0
    right: bool = False


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int | None]:
    """Each column's width, or None for a hidden one. Whole columns keep their full width even
    when the terminal is narrower than they are together (the terminal then wraps the lines)."""
    natural = [
        max([cell_len(column.name)] + [cell_len(row[i]) for row in rows])
        for i, column in enumerate(columns)
    ]
    floors = [
        natural[i] if column.cut_to is None else min(natural[i], column.cut_to)
        for i, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))

    def room() -> int:
        return width - GAP * (len(shown) - 1)

    while sum(floors[i] for i in shown) > room():
        hideable = [i for i in shown if columns[i].hide]
        if not hideable:
            break
        shown.remove(max(hideable, key=lambda i: columns[i].hide))
    widths = {i: natural[i] for i in shown}
    excess = sum(widths.values()) - room()
    while excess > 0:
        slack = [i for i in shown if widths[i] > floors[i]]
        if not slack:
            break
        widest = max(slack, key=lambda i: widths[i] - floors[i])
        widths[widest] -= 1
        excess -= 1
    return [widths.get(i) for i in range(len(columns))]


def print_fitted(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None = None
) -> None:
    """The rows under a bold header, fitted to the console's width; a title's parts (joined by
    SEPARATOR) go on as many lines as they need."""
    rows = [[" ".join(str(cell).split()) for cell in row] for row in rows]
    widths = fit(columns, rows, _common.out.width)
    say = _common.out.print
    for line in _title_lines(title or "", _common.out.width):
        say(Text(line, style="bold"))
    say(Text(_line([c.name for c in columns], columns, widths), style="bold"))
    for row in rows:
        say(Text(_line(row, columns, widths)))
    hidden = [c.name for c, w in zip(columns, widths, strict=True) if w is None]
    if hidden:
        note = f"not shown at this width: {', '.join(hidden)} (--json has every field)"
        say(Text(note, style="dim"), soft_wrap=False)


def _title_lines(title: str, width: int) -> list[str]:
    """The title on as many lines as it takes, broken only between its " · " parts."""
    lines: list[str] = []
    for part in title.split(SEPARATOR) if title else []:
        if lines and cell_len(lines[-1] + SEPARATOR + part) <= width:
            lines[-1] += SEPARATOR + part
        else:
            lines.append(part)
    return lines


def _line(cells: Sequence[str], columns: Sequence[Column], widths: list[int | None]) -> str:
    parts = []
    for cell, column, width in zip(cells, columns, widths, strict=True):
        if width is None:
            continue
        if cell_len(cell) > width:
            cell = set_cell_size(cell, width - 1) + "…"
        pad = " " * (width - cell_len(cell))
        parts.append(pad + cell if column.right else cell + pad)
    return (" " * GAP).join(parts).rstrip()
