"""What the expert grid shows for one event: a GridRow per layer, built from the model alone.

Pure (no Textual), so the grid's content for any token of any bundle can be checked directly:
numbers as stored (a non-number shows as 0), layout order, issue marks, layer motif accents.
"""

from __future__ import annotations

from typing import Any

from inferoscope import LayerEvent

from .motifs import LAYER_COLOURS
from .run_model import EventSlot, RunModel
from .widgets.expert_grid import GridRow


def as_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def as_list(value: Any) -> list[Any]:
    """A field that should be a list; anything else (an int, an object, null) is empty."""
    return value if isinstance(value, list) else []


def as_float(value: Any) -> float:
    """A number to draw with; not a number: 0; an integer past any float: infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def grid_rows(model: RunModel, slot: EventSlot | None, position: int, *, show_motifs: bool) -> list[GridRow]:
    """The rows for event ``position`` (``slot``); an unreadable event keeps one row per layout layer."""
    issues = model.issue_index.at(position) if slot else []
    flagged_layers = {i.location.layer_index for i in issues if i.location.layer_index is not None}
    flagged_layers |= model.issue_index.layout_layers
    layers = slot.layers() if slot is not None else ()
    if slot is None or slot.token is None or not layers:
        return [
            GridRow(index, model.grid_orders[index], None, flagged=index in flagged_layers)
            for index in sorted(model.grid_orders)
        ]
    motifs = model.motifs_at(position) if show_motifs else None
    rows: list[GridRow] = []
    for layer in layers:
        layer_index = -1 if layer.layer_index is None else layer.layer_index
        numbers = shown_numbers(layer)
        order = model.grid_orders.get(layer_index) or list(
            range(len(numbers or []) or layer.num_experts or 0)
        )
        experts = {
            i.location.expert_index
            for i in issues
            if i.location.layer_index == layer_index and i.location.expert_index is not None
        }
        motif = motifs.layers.get(layer_index) if motifs is not None else None
        rows.append(
            GridRow(
                layer_index,
                order,
                numbers,
                list(layer.selected),
                layer.normalized_entropy(),
                layer_index in flagged_layers,
                {e for e in experts if e is not None},
                motif_colour=motif.colour(LAYER_COLOURS) if motif is not None else None,
                motif_fit_strength=model.motifs.strength(motif) if motif and model.motifs else 1.0,
                motif_novel=motif.novel if motif is not None else False,
                note=None if numbers is not None else _no_scores_note(layer),
                shared=layer.shared_experts,
            )
        )
    return rows


def shown_numbers(layer: LayerEvent) -> list[float] | None:
    """What the cells are shaded by (as a multiple of the uniform share): the stored probabilities
    (v0.1.0: a non-number as 0), softmax scores, the softmax of router logits, or for sigmoid and
    sqrt-softplus scores their share of the layer's sum (they do not sum to 1); None when no
    scores are recorded."""
    if layer.stored:
        probs = layer.stored.get("router_probs")
        return [as_float(p) for p in probs] if isinstance(probs, list) else None
    if layer.scores is None:
        return None
    if layer.score_function != "softmax":
        distribution = layer.distribution()
        return None if distribution is None else distribution.tolist()
    return [float(v) for v in layer.scores]


def _no_scores_note(layer: LayerEvent) -> str:
    if layer.problem is not None:
        return "unreadable"
    if layer.selected:
        return "no scores recorded · selected " + " ".join(str(e) for e in layer.selected)
    return "unreadable"
