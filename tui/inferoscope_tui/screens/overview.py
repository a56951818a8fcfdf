"""Run-level views: expert load, entropy over tokens, co-activation and text by top-1 expert.

Four sections on one screen; tab moves the focus between them, j/k choose the layer, h/l move
inside the focused section and enter lists the tokens behind the number under the cursor (and
from that list, enter goes to the token). The numbers come from the validation pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from inferoscope import visible

from ..run_overview import LayerOverview, spark_glyph, spark_scale
from ..widgets.expert_grid import GLYPH_RAMP, PALETTE, cell_colours, level_of
from .drill import DrillScreen

SECTIONS = ("load", "entropy", "pairs", "text")
#: colours of top-1 experts in the text view; a vocabulary apart from the probability palette
EXPERT_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
#: without colour, the same eight experts are told apart by text attributes (named in the legend)
NO_COLOR_EXPERT_STYLES = (
    Style(bold=True),
    Style(underline=True),
    Style(italic=True),
    Style(reverse=True),
    Style(strike=True),
    Style(bold=True, underline=True),
    Style(bold=True, italic=True),
    Style(italic=True, underline=True),
)
MARGIN = 6
PAIRS_SHOWN = 6
TEXT_LINES = 3


@lru_cache(maxsize=64)
def _cell_style(level: int, cursor: bool, no_color: bool, palette: tuple[str, ...] = PALETTE) -> Style:
    if no_color:
        return Style(reverse=cursor)
    background, foreground = cell_colours(level, palette)
    return Style(bgcolor=background, color=foreground, reverse=cursor)


def _pair_label(a: int, b: int, together: int, lift: float) -> str:
    return f"e{a}+e{b} {together} tok x{lift:.1f}"


@dataclass(slots=True)
class Target:
    """Where the main view should go after a drill: token, layer and expert."""

    position: int
    layer_index: int
    expert: int | None


class OverviewScreen(Screen[Target | None]):
    BINDINGS = [
        Binding("tab", "section(1)", "Next section", id="overview.section_next"),
        Binding("shift+tab", "section(-1)", "Previous section", id="overview.section_prev", show=False),
        Binding("j,down", "layer(1)", "Next layer", id="overview.layer_down"),
        Binding("k,up", "layer(-1)", "Previous layer", id="overview.layer_up", show=False),
        Binding("l,right", "move(1)", "Right", id="overview.right"),
        Binding("h,left", "move(-1)", "Left", id="overview.left", show=False),
        Binding("enter", "drill", "Tokens behind it", id="overview.drill"),
        Binding("escape,v,q", "close", "Back", id="overview.close"),
    ]

    def __init__(
        self,
        layers: dict[int, LayerOverview],
        *,
        title: Text,
        orders: dict[int, list[int]],
        text_of: Callable[[int], str | None],
        position: int,
        layer_index: int | None,
        no_color: bool,
        scrambled: str | None = None,
        palette: tuple[str, ...] = PALETTE,
        entropy_of: str = "",
    ) -> None:
        super().__init__()
        self.palette = palette
        #: what the entropy is of, where it is not a probability distribution the model computed
        self.entropy_of = entropy_of
        self.scrambled = scrambled  # the null model's variant: every title says so
        self.by_layer = layers
        self.title_text = title
        self.orders = orders
        self.text_of = text_of
        self.no_color = no_color
        indices = sorted(layers)
        self.layer_row = indices.index(layer_index) if layer_index in indices else 0
        self.section = 0
        self.expert_column = 0
        self.bin = 0
        self.pair = 0
        self.text_position = position
        self.drawn_width = -1

    # -- structure -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with VerticalScroll(id="overview-scroll"):
            yield Static(id="overview-body")

    def on_mount(self) -> None:
        self.redraw()

    def on_resize(self) -> None:
        if self.size.width != self.drawn_width:
            self.redraw()

    @property
    def chosen_layer(self) -> LayerOverview | None:
        indices = sorted(self.by_layer)
        return self.by_layer[indices[self.layer_row]] if indices else None

    def order_of(self, layer: LayerOverview) -> list[int]:
        order = self.orders.get(layer.layer_index)
        return order if order and len(order) == layer.experts else list(range(layer.experts))

    @property
    def width(self) -> int:
        return max(40, (self.size.width or 80) - 4)  # padding and a scrollbar

    # -- actions ---------------------------------------------------------------------------
    def action_section(self, delta: int) -> None:
        self.section = (self.section + delta) % len(SECTIONS)
        self.redraw()

    def action_layer(self, delta: int) -> None:
        self.layer_row = max(0, min(len(self.by_layer) - 1, self.layer_row + delta))
        self.redraw()

    def action_move(self, delta: int) -> None:
        layer = self.chosen_layer
        if layer is None:
            return
        name = SECTIONS[self.section]
        if name == "load":
            self.expert_column = max(0, min(layer.experts - 1, self.expert_column + delta))
        elif name == "entropy":
            bins = len(layer.entropy_bins(self.bins_wanted)[1])
            self.bin = max(0, min(max(0, bins - 1), self.bin + delta))
        elif name == "pairs":
            self.pair = max(0, min(max(0, self.pairs_fitting(layer) - 1), self.pair + delta))
        else:
            self.text_position = max(0, min(layer.topk.shape[0] - 1, self.text_position + delta))
        self.redraw()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_drill(self) -> None:
        layer = self.chosen_layer
        if layer is None:
            return
        name = SECTIONS[self.section]
        expert: int | None = None
        if name == "load":
            expert = self.order_of(layer)[min(self.expert_column, layer.experts - 1)]
            positions = layer.tokens_with_expert(expert)
            title = f"layer {layer.layer_index}: tokens that picked expert {expert}"
        elif name == "entropy":
            _means, spans = layer.entropy_bins(self.bins_wanted)
            if not spans:
                return
            start, end = spans[min(self.bin, len(spans) - 1)]
            positions = np.arange(start, end)
            title = f"layer {layer.layer_index}: tokens {start}–{end - 1} (one sparkline column)"
        elif name == "pairs":
            pairs = layer.top_pairs(PAIRS_SHOWN)
            if not pairs:
                return
            a, b, _count, _lift = pairs[min(self.pair, len(pairs) - 1)]
            expert = a
            positions = layer.tokens_with_pair(a, b)
            title = f"layer {layer.layer_index}: tokens that picked experts {a} and {b} together"
        else:
            top1 = int(layer.top1()[self.text_position]) if layer.topk.shape[0] else -1
            self.dismiss(Target(self.text_position, layer.layer_index, top1 if top1 >= 0 else None))
            return

        def chosen(position: int | None) -> None:
            if position is not None:
                self.dismiss(Target(position, layer.layer_index, expert))

        def label(position: int) -> Text:
            return self._drill_label(layer, position, expert)

        if self.scrambled is not None:
            title = f"SCRAMBLED: {self.scrambled} · {title}"
        self.app.push_screen(DrillScreen(title, positions.tolist(), label), chosen)

    def _drill_label(self, layer: LayerOverview, position: int, expert: int | None) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"token {position:>6}  ", style="bold")
        token = self.text_of(position)
        text.append(visible(token, 30) if token is not None else "⟨unreadable⟩")
        entropy = layer.entropy[position]
        text.append("  H/ln n ", style="dim")
        text.append("—" if np.isnan(entropy) else f"{entropy:.3f}")
        if expert is not None:
            rank = layer.rank_of(position, expert)
            text.append(f"  expert {expert} rank {rank + 1}" if rank is not None else "", style="dim")
        top1 = int(layer.top1()[position])
        text.append(f"  top-1 {top1}" if top1 >= 0 else "  top-1 —", style="dim")
        return text

    # -- drawing ---------------------------------------------------------------------------
    @property
    def bins_wanted(self) -> int:
        return self.width - MARGIN

    def redraw(self) -> None:
        if not self.is_mounted:
            return
        self.drawn_width = self.size.width
        body = Text(no_wrap=True, overflow="crop")
        body.append_text(self.title_text)
        body.append("\n")
        if not self.by_layer:
            body.append("no usable layer entries in this run", style="italic")
            self.query_one("#overview-body", Static).update(body)
            return
        for number, draw in enumerate((self._load, self._entropy, self._pairs, self._text)):
            focused = number == self.section
            marker = "▶ " if focused else "  "
            body.append(marker, style="bold")
            draw(body, focused)
        body.append("tab section · j/k layer · h/l move · enter tokens behind it · esc back", style="dim")
        self.query_one("#overview-body", Static).update(body)

    def _expert_style(self, rank: int, colour: str) -> Style:
        """An expert's style in the text view: its colour, or without colour a text attribute."""
        if self.no_color:
            return NO_COLOR_EXPERT_STYLES[rank % len(NO_COLOR_EXPERT_STYLES)]
        return Style(color=colour, bold=True)

    def _title(self, body: Text, name: str, description: str, focused: bool) -> None:
        """A section title on one line: the description is cut to the width, never wrapped."""
        body.append(name, style="bold underline" if focused else "bold")
        room = self.width - 2 - len(name) - 3
        if room > 8:
            shown = description if len(description) <= room else description[: room - 1] + "…"
            body.append(f" · {shown}", style="dim")
        body.append("\n")

    def _layer_label(self, body: Text, layer: LayerOverview, chosen: bool) -> None:
        body.append(f"L{layer.layer_index:<3}", style="bold" if chosen else "dim")
        body.append("▸ " if chosen else "  ", style="bold")

    def _load(self, body: Text, focused: bool) -> None:
        self._title(body, "expert load", "top-k picks per expert, x uniform share (grid colours)", focused)
        for row, layer in enumerate(self.by_layer.values()):
            chosen = row == self.layer_row
            self._layer_label(body, layer, chosen)
            ratio = layer.load_ratio()
            order = self.order_of(layer)
            cell = max(1, min(3, (self.width - MARGIN - 22) // max(1, layer.experts)))
            run_text, run_key = "", None  # neighbouring cells of one style become one span
            for column, expert in enumerate(order):
                level = level_of(float(ratio[expert]), 1)
                cursor = focused and chosen and column == self.expert_column
                glyph = GLYPH_RAMP[level] if self.no_color else " "
                key = (level, cursor)
                if key != run_key and run_text:
                    body.append(run_text, _cell_style(*run_key, self.no_color, self.palette))  # type: ignore[misc]
                    run_text = ""
                run_text += glyph.center(cell) if cell > 1 else glyph
                run_key = key
            if run_text:
                body.append(run_text, _cell_style(*run_key, self.no_color, self.palette))  # type: ignore[misc]
            busiest = int(np.argmax(layer.load)) if layer.load.size else 0
            if chosen and focused:
                expert = order[min(self.expert_column, len(order) - 1)]
                body.append(f" e{expert}: {int(layer.load[expert])} picks x{ratio[expert]:.2f}")
            else:
                body.append(f" max e{busiest} x{ratio[busiest]:.2f}", style="dim")
            body.append("\n")

    def _entropy(self, body: Text, focused: bool) -> None:
        binned = {i: layer.entropy_bins(self.bins_wanted) for i, layer in self.by_layer.items()}
        spans = next(iter(binned.values()))[1]
        per = spans[0][1] - spans[0][0] if spans else 0
        low, high = spark_scale([means for means, _spans in binned.values()])
        scale = f"normalized, ▁={low:.2f} █={high:.2f}, {len(spans)} columns of ~{per} tokens"
        if self.entropy_of:
            scale = f"of {self.entropy_of}, {scale}"
        self._title(body, "entropy over tokens", scale, focused)
        for row, layer in enumerate(self.by_layer.values()):
            chosen = row == self.layer_row
            self._layer_label(body, layer, chosen)
            means, spans = binned[layer.layer_index]
            glyphs = "".join(spark_glyph(value, low, high) for value in means.tolist())
            plain = Style(color=None if self.no_color else "#7fb8e0")
            if focused and chosen and 0 <= self.bin < len(glyphs):  # one span, or three with the cursor
                body.append(glyphs[: self.bin], plain)
                body.append(glyphs[self.bin], plain + Style(reverse=True))
                body.append(glyphs[self.bin + 1 :], plain)
            else:
                body.append(glyphs, plain)
            body.append("\n")
        chosen_layer = self.chosen_layer
        if focused and chosen_layer is not None:
            means, spans = chosen_layer.entropy_bins(self.bins_wanted)
            if spans:
                column = min(self.bin, len(spans) - 1)
                start, end = spans[column]
                value = means[column]
                shown = "—" if np.isnan(value) else f"{value:.3f}"
                body.append(f"      tokens {start}–{end - 1}: mean {shown}\n", style="dim")

    def pairs_fitting(self, layer: LayerOverview) -> int:
        used, count = 4, 0
        for a, b, together, lift in layer.top_pairs(PAIRS_SHOWN):
            used += len(_pair_label(a, b, together, lift)) + 2
            if used - 2 > self.width:
                break
            count += 1
        return count

    def _pairs(self, body: Text, focused: bool) -> None:
        layer = self.chosen_layer
        assert layer is not None
        name = f"co-activation · layer {layer.layer_index}"
        self._title(body, name, "picked together; lift = observed / expected if independent", focused)
        pairs = layer.top_pairs(PAIRS_SHOWN)
        body.append("    ")
        if layer.k < 2:
            body.append("top-1 routing: no expert is ever picked together with another", style="italic")
        elif not pairs:
            body.append("no pairs", style="italic")
        used = 4
        for number, (a, b, count, lift) in enumerate(pairs):
            cursor = focused and number == self.pair
            label = _pair_label(a, b, count, lift)
            if used + len(label) > self.width:
                break
            body.append(label, Style(reverse=cursor, bold=cursor))
            body.append("  ")
            used += len(label) + 2
        body.append("\n")

    def _text(self, body: Text, focused: bool) -> None:
        layer = self.chosen_layer
        assert layer is not None
        top1 = layer.top1()
        valid = top1[top1 >= 0]
        counts = np.bincount(valid.astype(np.int64), minlength=layer.experts) if valid.size else np.zeros(0)
        ranked = [int(e) for e in np.argsort(-counts, kind="stable")[: len(EXPERT_COLOURS)] if counts[e] > 0]
        colour = {expert: EXPERT_COLOURS[n] for n, expert in enumerate(ranked)}
        body.append(
            f"text by top-1 expert · layer {layer.layer_index}", style="bold underline" if focused else "bold"
        )
        body.append(" · ", style="dim")
        used = len(f"text by top-1 expert · layer {layer.layer_index} · ") + 2
        for expert in ranked:
            entry = f"e{expert}:{int(counts[expert])} "
            if used + len(entry) + 11 > self.width:
                break
            body.append(f"e{expert}", self._expert_style(ranked.index(expert), colour[expert]))
            body.append(f":{int(counts[expert])} ", style="dim")
            used += len(entry)
        body.append("other: dim\n" if self.no_color else "other: grey\n", style="dim")
        budget = (self.width - 4) * TEXT_LINES
        count = top1.size
        start = max(0, self.text_position - budget // 3)
        line = Text("    ", no_wrap=False, overflow="fold")
        used = 0
        position = start
        while position < count and used < budget:
            token = self.text_of(position)
            shown = (visible(token) if token else "∅") if token is not None else "⟨unreadable⟩"
            expert = int(top1[position])
            if expert in colour:
                style = self._expert_style(ranked.index(expert), colour[expert])
            else:
                style = Style(dim=True) if self.no_color else Style(color="#808080")
            cursor = focused and position == self.text_position
            if cursor and self.no_color:  # reverse already names an expert here: mark the cursor apart
                line.append("⟦", Style(bold=True))
            elif cursor:
                style += Style(reverse=True, bold=True)
            line.append(shown, style)
            if cursor and self.no_color:
                line.append("⟧", Style(bold=True))
            used += len(shown)
            position += 1
        for part in line.wrap(self.app.console, self.width)[:TEXT_LINES]:
            body.append_text(part)
            body.append("\n")
        if focused and 0 <= self.text_position < count:
            expert = int(top1[self.text_position])
            body.append(
                f"      token {self.text_position}: top-1 expert {expert if expert >= 0 else '—'}\n",
                style="dim",
            )
