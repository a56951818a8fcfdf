"""The expert grid: one row per MoE layer, experts in layout order, drawn line by line.

Colour is router probability as a multiple of uniform (p x n) from a fixed six-step palette;
the cursor cell is reversed; layers and experts with issues are marked in the margin and
underlined. Without colour the cells use a glyph ramp.

Two encodings, chosen by the room there is:
- *spread*: every expert gets 2-3 columns, the top-k experts show their rank digit, and two
  neighbouring digits are always apart (one digit, one coloured column);
- *packed* (too many experts for that, e.g. 64 at 80 columns): each cell holds ``group``
  neighbouring experts and shows the strongest of them; a cell holding a selected expert shows
  ``•``; the top-k expert ids follow the heat in rank order, so ranks never fuse. The detail pane
  lists the experts of the cursor's cell with their probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

#: p x n thresholds: under half of uniform, under uniform, 2x, 4x, 8x, above.
LEVEL_BOUNDS = (0.5, 1.0, 2.0, 4.0, 8.0)
PALETTE = ("#10141f", "#1d3557", "#2f6690", "#3a9ad9", "#f4a261", "#ffd166")
#: for 16-colour terminals (TERM=xterm, the Linux console): six named colours that stay apart
#: there, none of them grey (what "below uniform" and "about uniform" collapse to) or red (errors)
PALETTE_16 = ("black", "blue", "cyan", "green", "yellow", "bright_white")
GLYPH_RAMP = (" ", ".", ":", "-", "=", "#")
MARGIN = 14  # "L12  0.95" + issue mark + compare mark + motif accent + novelty glyph + space
SELECTED_GLYPH = "•"


@dataclass(frozen=True, slots=True)
class Packing:
    """How a row is drawn: ``group`` experts a cell of ``width`` columns, then a top-k list."""

    group: int
    width: int
    list_width: int

    @property
    def packed(self) -> bool:
        return self.list_width > 0


def packing_for(experts: int, top_k: int, columns: int) -> Packing:
    """The encoding for ``experts`` per row in ``columns`` (margin excluded)."""
    experts = max(1, experts)
    if columns >= 2 * experts:
        return Packing(1, min(3, columns // experts), 0)
    list_width = max(1, top_k) * (len(str(experts - 1)) + 1) + 1
    heat = max(8, columns - list_width)
    return Packing(-(-experts // heat), 1, list_width)


def level_of(p: float, n: int) -> int:
    ratio = p * n
    for level, bound in enumerate(LEVEL_BOUNDS):
        if ratio < bound:
            return level
    return len(LEVEL_BOUNDS)


#: "not decided yet": the app picks a palette once it knows whether it draws on a real terminal
PALETTE_DETECT: tuple[str, ...] = ()


def palette_for(color_system: str | None) -> tuple[str, ...]:
    """The probability palette for a terminal's colour depth (Rich's name for it; "detect": later)."""
    if color_system == "detect":
        return PALETTE_DETECT
    return PALETTE_16 if color_system in ("standard", "windows") else PALETTE


def cell_colours(level: int, palette: tuple[str, ...]) -> tuple[str, str]:
    """(background, foreground) of a level: dark text on the light steps, white on the dark."""
    light = level >= (2 if palette is PALETTE_16 else 4)
    return palette[level], ("black" if palette is PALETTE_16 else "#000000") if light else (
        "bright_white" if palette is PALETTE_16 else "#ffffff"
    )


@lru_cache(maxsize=512)
def _cell_style(
    level: int,
    selected: bool,
    cursor: bool,
    flagged: bool,
    no_color: bool,
    palette: tuple[str, ...] = PALETTE,
) -> Style:
    """One of a few dozen cell styles, made once (a grid redraw uses a thousand cells)."""
    if no_color:
        return Style(bold=selected, reverse=cursor, underline=flagged)
    background, foreground = cell_colours(level, palette)
    return Style(bgcolor=background, color=foreground, bold=selected, reverse=cursor, underline=flagged)


_DIFF = Style(strike=True, bold=True, color="#ff5fd7")
_DIFF_NO_COLOR = Style(strike=True)


def faded(colour: str, strength: float, background: str = "#1e1e1e") -> str:
    """``colour`` mixed toward the background: full at strength 1, a ghost near 0."""
    strength = max(0.15, min(1.0, strength))
    mix = [
        round(int(colour[i : i + 2], 16) * strength + int(background[i : i + 2], 16) * (1 - strength))
        for i in (1, 3, 5)
    ]
    return "#" + "".join(f"{v:02x}" for v in mix)


def shared_label(count: int) -> str:
    """``S`` per always-on shared expert (``S×n`` past three)."""
    return "S" * count if count <= 3 else f"S×{count}"


def rank_glyph(rank: int) -> str:
    return str(rank + 1) if rank < 9 else "+"


@dataclass(slots=True)
class GridRow:
    """What one layer shows for the current token."""

    layer_index: int
    order: list[int]
    probs: list[float] | None
    topk: list[int] = field(default_factory=list)
    normalized_entropy: float | None = None
    flagged: bool = False
    flagged_experts: set[int] = field(default_factory=set)
    #: compare mode: "≠" the top-k set and top-1 differ, "~" only the set differs, "↕" the same set
    #: in another order
    compare_mark: str = " "
    #: compare mode: experts in this run's top-k but not the other's (or the reverse)
    diff_experts: set[int] = field(default_factory=set)
    #: layer motif: its colour, drawn weaker for weaker fits, and whether this token founded it
    motif_colour: str | None = None
    motif_fit_strength: float = 1.0
    motif_novel: bool = False
    #: what to show instead of cells when there are no probabilities (default: "unreadable")
    note: str | None = None
    #: experts every token uses besides the routed ones: drawn as their own always-on column
    shared: int = 0


class ExpertGrid(ScrollView, can_focus=True, inherit_bindings=False):
    """Line-API grid; it never parses bundle text, it only draws numbers.

    Scroll keys are not inherited (left/right/home/end step through tokens); the view
    follows the cursor instead.
    """

    BINDINGS = [
        Binding("down,j", "layer(1)", "Layer ↓", id="grid.layer_down", show=False),
        Binding("up,k", "layer(-1)", "Layer ↑", id="grid.layer_up", show=False),
        Binding("L,shift+right", "expert(1)", "Expert →", id="grid.expert_right", show=False),
        Binding("H,shift+left", "expert(-1)", "Expert ←", id="grid.expert_left", show=False),
    ]

    class CursorMoved(Message):
        def __init__(self, row: int, column: int) -> None:
            super().__init__()
            self.row = row
            self.column = column

    def __init__(
        self, *, no_color: bool = False, palette: tuple[str, ...] = PALETTE, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.palette = palette
        self.rows: list[GridRow] = []
        self.cursor_row = 0
        self.cursor_column = 0
        self.no_color = no_color

    @property
    def shared_width(self) -> int:
        """Columns of the shared-expert column at a row's end (0 when no layer has one)."""
        shared = max((row.shared for row in self.rows), default=0)
        return 0 if shared == 0 else len(shared_label(shared)) + 1

    @property
    def packing(self) -> Packing:
        experts = max((len(row.order) for row in self.rows), default=1) or 1
        top_k = max((len(row.topk) for row in self.rows), default=1)
        return packing_for(experts, top_k, (self.size.width or 80) - MARGIN - self.shared_width)

    @property
    def cell_width(self) -> int:
        return self.packing.width

    def cursor_group(self) -> list[int]:
        """The experts drawn in the cursor's cell (one unless packed), in layout order."""
        if not self.rows:
            return []
        group = self.packing.group
        start = self.cursor_column // group * group
        return self.rows[self.cursor_row].order[start : start + group]

    def set_rows(self, rows: list[GridRow]) -> None:
        self.rows = rows
        self._update_virtual_size()
        self.cursor_row = min(self.cursor_row, max(0, len(rows) - 1))
        self.refresh()

    def move_cursor(self, row: int, column: int) -> None:
        if not self.rows:
            return
        self.cursor_row = max(0, min(row, len(self.rows) - 1))
        width = len(self.rows[self.cursor_row].order)
        self.cursor_column = max(0, min(column, max(0, width - 1)))
        if self.is_mounted:
            self.scroll_to_region(self._cell_region(), animate=False, immediate=True)
        self.refresh()
        self.post_message(self.CursorMoved(self.cursor_row, self.cursor_column))

    def _update_virtual_size(self) -> None:
        experts = max((len(row.order) for row in self.rows), default=0)
        packing = self.packing
        cells = -(-experts // packing.group)
        self.virtual_size = Size(
            MARGIN + cells * packing.width + packing.list_width + self.shared_width, len(self.rows)
        )

    def on_resize(self) -> None:
        self._update_virtual_size()
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def _cell_region(self) -> Region:
        packing = self.packing
        return Region(
            MARGIN + self.cursor_column // packing.group * packing.width, self.cursor_row, packing.width, 1
        )

    def action_layer(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta, self.cursor_column)

    def action_expert(self, delta: int) -> None:
        self.move_cursor(self.cursor_row, self.cursor_column + delta)

    # -- drawing --------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row_number = y + scroll_y
        width = self.size.width
        if row_number >= len(self.rows):
            return Strip.blank(width, Style())
        strip = Strip(self._row_segments(row_number))
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, Style())

    def _motif_accent(self, row: GridRow) -> Segment:
        """The layer motif as a coloured bar; a weak fit is a thin, faded bar, never a full one."""
        if row.motif_colour is None:
            return Segment(" ", Style())
        glyph = "▌" if row.motif_fit_strength >= 0.5 else "╎"
        if self.no_color:
            return Segment(glyph, Style(dim=row.motif_fit_strength < 0.5))
        return Segment(glyph, Style(color=faded(row.motif_colour, row.motif_fit_strength)))

    def _row_segments(self, row_number: int) -> list[Segment]:
        row = self.rows[row_number]
        selected = row_number == self.cursor_row
        sharp = "  —  " if row.normalized_entropy is None else f"{row.normalized_entropy:5.2f}"
        mark = "!" if row.flagged else " "
        margin_style = Style(bold=selected, color=None if self.no_color else "#c0c0c0")
        segments = [
            Segment(f"L{row.layer_index:<3}{sharp}", margin_style),
            Segment(mark, Style(bold=True, color=None if self.no_color else "red")),
            Segment(row.compare_mark, Style(bold=True, color=None if self.no_color else "magenta")),
            self._motif_accent(row),
            Segment("✦" if row.motif_novel else " ", Style(bold=True)),
            Segment(" ", Style()),
        ]
        if row.probs is None:
            segments.append(Segment(row.note or "unreadable", Style(italic=True)))
            return segments
        packing = self.packing
        if packing.packed:
            return segments + self._packed_cells(row, selected, packing) + self._shared_cells(row)
        n = len(row.probs)
        width = packing.width
        ranks = {expert: rank for rank, expert in enumerate(row.topk)}
        for column, expert in enumerate(row.order):
            p = row.probs[expert] if 0 <= expert < n else 0.0
            level = level_of(p, n)
            rank = ranks.get(expert)
            cursor = selected and column == self.cursor_column and self.has_focus
            flagged = expert in row.flagged_experts or (selected and column == self.cursor_column)
            glyph = rank_glyph(rank) if rank is not None else (GLYPH_RAMP[level] if self.no_color else " ")
            style = _cell_style(level, rank is not None, cursor, flagged, self.no_color, self.palette)
            if expert in row.diff_experts:
                style = style + _DIFF_NO_COLOR if self.no_color else style + _DIFF
            # a digit, then a plain coloured column: two neighbouring ranks never fuse
            segments.append(Segment(glyph.center(width), style))
        return segments + self._shared_cells(row)

    def _shared_cells(self, row: GridRow) -> list[Segment]:
        """Shared experts: always on, so one marker column apart from the routed cells."""
        if not row.shared:
            return []
        style = Style(bold=True) if self.no_color else Style(bold=True, color="#87d7af")
        return [Segment(" ", Style()), Segment(shared_label(row.shared), style)]

    def _packed_cells(self, row: GridRow, selected: bool, packing: Packing) -> list[Segment]:
        """Cells of ``group`` experts (the strongest shown; ``•``: holds a selected one), then top-k ids."""
        assert row.probs is not None
        n, group = len(row.probs), packing.group
        chosen = set(row.topk)
        cursor_cell = self.cursor_column // group if selected else -1
        focused = self.has_focus  # without focus the cursor cell is underlined, not reversed
        segments: list[Segment] = []
        for cell, start in enumerate(range(0, len(row.order), group)):
            members = row.order[start : start + group]
            level = max(level_of(row.probs[e] if 0 <= e < n else 0.0, n) for e in members)
            holds = any(e in chosen for e in members)
            flagged = any(e in row.flagged_experts for e in members) or (cell == cursor_cell and not focused)
            glyph = SELECTED_GLYPH if holds else (GLYPH_RAMP[level] if self.no_color else " ")
            style = _cell_style(
                level, holds, cell == cursor_cell and focused, flagged, self.no_color, self.palette
            )
            if any(e in row.diff_experts for e in members):
                style = style + _DIFF_NO_COLOR if self.no_color else style + _DIFF
            segments.append(Segment(glyph, style))
        segments.append(Segment(" ", Style()))
        cursor_expert = (
            row.order[self.cursor_column] if selected and self.cursor_column < len(row.order) else None
        )
        digits = len(str(max(0, n - 1)))
        for rank, expert in enumerate(row.topk):
            style = Style(
                bold=rank == 0, reverse=expert == cursor_expert, underline=expert in row.flagged_experts
            )
            if expert in row.diff_experts:
                style = style + (_DIFF_NO_COLOR if self.no_color else _DIFF)
            segments.append(Segment(f"{expert:>{digits}}", style))
            segments.append(Segment(" ", Style()))
        return segments
