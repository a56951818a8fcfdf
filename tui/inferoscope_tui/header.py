"""The one-line header: what matters most survives at every width.

Parts are shown in a fixed order but kept by priority: when the line is too wide, the run and
model ids are first shortened with an ellipsis, then the least important parts are dropped.
The validation state and the position are the last to go, so an 80-column terminal never
loses them to a long run_id, a motif chip or the SCRAMBLED label.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

SEPARATOR = " · "
ID_CAP = 40  # cells an id may take when there is room, counted after escaping


@dataclass(slots=True)
class Part:
    """One header segment. ``priority``: lower is kept longer. ``shrink_to``: ellipsis floor in cells."""

    text: Text
    priority: int
    shrink_to: int | None = None
    joined: bool = False  # drawn right after the previous part, without a separator

    @property
    def cells(self) -> int:
        return self.text.cell_len


def shortened(text: Text, cells: int) -> Text:
    """``text`` cut to ``cells`` columns with an ellipsis (a copy)."""
    copy = text.copy()
    copy.truncate(max(1, cells), overflow="ellipsis")
    return copy


def fit_header(parts: list[Part], width: int) -> Text:
    """The parts joined in order, shortened and dropped by priority until they fit ``width``."""
    kept = [
        Part(shortened(p.text, ID_CAP) if p.shrink_to else p.text, p.priority, p.shrink_to, p.joined)
        for p in parts
        if p.text.cell_len
    ]

    def total() -> int:
        return sum(p.cells for p in kept) + sum(0 if p.joined else len(SEPARATOR) for p in kept[1:])

    for part in sorted((p for p in kept if p.shrink_to), key=lambda p: -p.priority):
        excess = total() - width
        if excess <= 0:
            break
        part.text = shortened(part.text, max(part.shrink_to or 1, part.cells - excess))
    while total() > width and len(kept) > 1:
        kept.remove(max(kept, key=lambda p: p.priority))
    line = Text(no_wrap=True, overflow="ellipsis")
    for number, part in enumerate(kept):
        if number and not part.joined:
            line.append(SEPARATOR)
        line.append_text(part.text)
    if line.cell_len > width:
        line.truncate(width, overflow="ellipsis")
    return line
