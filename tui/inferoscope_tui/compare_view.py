"""What compare mode draws: disagreement marks on both grids and the agreement sparkline.

The numbers are the core's (``inferoscope.compare``): top-k Jaccard, Jensen-Shannon divergence in
bits and top-1 agreement, so the picture and ``inferoscope compare`` never disagree.
"""

from __future__ import annotations

import numpy as np
from rich.style import Style
from rich.text import Text

from inferoscope import LayerEvent, visible
from inferoscope.compare import RunComparison

from .run_model import EventSlot, RunModel
from .run_overview import spark_glyph
from .widgets.detail import labelled
from .widgets.expert_grid import GridRow


def mark_disagreements(rows_a: list[GridRow], rows_b: list[GridRow]) -> None:
    """Set each layer's compare mark and the experts in only one top-k, on both sides."""
    by_layer = {row.layer_index: row for row in rows_b}
    for row in rows_a:
        other = by_layer.get(row.layer_index)
        row.compare_mark, row.diff_experts = " ", set()
        if other is None or not _comparable(row, other):
            row.compare_mark = "?"
            if other is not None:
                other.compare_mark = "?"
            continue
        mine, theirs = set(row.topk), set(other.topk)
        row.compare_mark = other.compare_mark = compare_mark(row.topk, other.topk)
        row.diff_experts = mine - theirs
        other.diff_experts = theirs - mine
    seen = {row.layer_index for row in rows_a}
    for other in rows_b:
        if other.layer_index not in seen:
            other.compare_mark = "?"


def _comparable(a: GridRow, b: GridRow) -> bool:
    """Both rows hold a selection of the same experts (scores may be missing on one side: an
    engine's top-k-only run is compared by its selection)."""
    if a.probs is not None and b.probs is not None:
        return len(a.probs) == len(b.probs)
    return bool(a.topk) and bool(b.topk) and len(a.order) == len(b.order)


def compare_mark(a: list[int], b: list[int]) -> str:
    """``↕`` the same experts in another order (a reordered top-k is not a changed top-k), ``≠``
    another set and another top-1, ``~`` another set with the same top-1, blank: identical."""
    if set(a) == set(b):
        return "↕" if a != b else " "
    top1_differs = (a[:1] != b[:1]) if a and b else True
    return "≠" if top1_differs else "~"


def layer_agreement(
    comparison: RunComparison | None,
    position: int,
    layer_index: int | None,
    layer_a: LayerEvent | None,
    layer_b: LayerEvent | None,
) -> list[str]:
    """['layer i: top-k Jaccard J · JSD D bits', 'top-1 A a / B b'] at one token and layer, read from
    the core's RunComparison (the numbers ``inferoscope compare`` prints); [] if not comparable."""
    if comparison is None:
        return ["comparing every token of both runs…"]
    if layer_index not in comparison.layers or not 0 <= position < comparison.aligned:
        return []
    column = comparison.layers.index(layer_index)
    jaccard, jsd = comparison.jaccard[position, column], comparison.jsd[position, column]
    if np.isnan(jaccard):
        return []
    lines = [
        f"layer {layer_index}: top-k Jaccard {jaccard:.2f}"
        + ("" if np.isnan(jsd) else f" · JSD {bits(jsd)} bits")
    ]
    if layer_a is not None and layer_b is not None and layer_a.selected and layer_b.selected:
        lines.append(f"top-1 A {_top1(layer_a)} / B {_top1(layer_b)}")
    margins = comparison.flip_margin
    if margins.size and not np.isnan(margins[position, column]):
        usual = comparison.usual_gap(column)
        lines.append(f"flip margin {margins[position, column]:.2e}")  # two short lines: 80 columns
        if usual is not None:
            lines.append(f"boundary gap p50 {usual:.2e}")
    return lines


def _top1(layer: LayerEvent) -> int:
    """The expert with the highest score (as the comparison's top-1 agreement), else the first selected."""
    if layer.stored:
        probs = layer.stored.get("router_probs")
        try:
            return int(np.argmax(np.asarray(probs, dtype=np.float64)))
        except (TypeError, ValueError, OverflowError):
            return layer.selected[0]
    distribution = layer.distribution()
    return int(np.argmax(distribution)) if distribution is not None else layer.selected[0]


def bits(value: float) -> str:
    """A divergence readable at every scale (bf16 vs fp32 differences are around 1e-5 bits)."""
    return f"{value:.4f}" if value == 0 or value >= 1e-3 else f"{value:.2e}"


def agreement_line(comparison: RunComparison | None, position: int, width: int) -> Text:
    """Per-token agreement (mean top-k Jaccard over layers) over the run; the current token marked."""
    text = Text(no_wrap=True, overflow="crop")
    text.append("A↔B ", style="bold magenta")
    if comparison is None:
        text.append("comparing every token of both runs…", style="dim italic")
        return text
    values = comparison.memo.get("token_agreement")
    if values is None:
        values = comparison.memo["token_agreement"] = comparison.token_agreement()
    count = values.size
    if count == 0:
        text.append("no aligned tokens", style="italic")
        return text
    here = values[position] if 0 <= position < count else float("nan")
    shown = "—" if np.isnan(here) else f"{here:.2f}"
    legend = f" worst Jaccard ▁0 █1 · here {shown}"
    room = max(10, width - len("A↔B ") - len(legend))  # the whole line fits the width
    bins = min(room, count)
    edges, worst = _worst_per_bin(comparison, values, bins)
    current = int(np.searchsorted(edges, position, side="right")) - 1
    for b in range(bins):
        style = Style(reverse=True, bold=True) if b == current else Style(color="#d7afff")
        text.append(spark_glyph(float(worst[b])), style)
    text.append(legend, style="dim")
    return text


def _worst_per_bin(comparison: RunComparison, values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges over the tokens and each bin's lowest agreement (a single disagreeing token
    shows in its cell however many tokens share it); computed once per width."""
    key = ("worst_per_bin", bins)
    if key not in comparison.memo:
        count = values.size
        edges = np.linspace(0, count, bins + 1).astype(int)
        filled = np.where(np.isnan(values), np.inf, values)
        worst = np.minimum.reduceat(filled, edges[:-1]) if count else np.zeros(0)
        worst = np.where(np.isinf(worst), np.nan, worst)
        comparison.memo[key] = (edges, worst)
    result: tuple[np.ndarray, np.ndarray] = comparison.memo[key]
    return result


def compare_detail(
    model_b: RunModel,
    slot: EventSlot,
    layer: LayerEvent | None,
    layer_index: int | None,
    comparison: RunComparison | None = None,
) -> Text:
    """A vs B at the cursor layer for the detail pane: the numbers behind the marks."""
    text = Text()
    if slot.position >= model_b.count:
        text.append("B: no token here\n", style="bold red")
        return text
    other = model_b.slot(slot.position)
    layer_b = other.layer(layer_index)
    mine = None if slot.token is None else slot.token.token_id
    if other.token is not None and other.token.token_id != mine:
        different = Text("different token: ", style="bold red")
        different.append(visible(other.token_text or "", 30))
        labelled(text, "B", different)
    lines = layer_agreement(comparison, slot.position, layer_index, layer, layer_b) or [
        "layer not comparable"
    ]
    for number, line in enumerate(lines):
        labelled(text, "A vs B" if number == 0 else "", Text(line, style="magenta"))
    return text
