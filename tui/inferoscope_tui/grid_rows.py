"""What the expert grid shows for one event: a GridRow per layer, built from the model alone.

Pure (no Textual), so the grid's content for any token of any bundle can be checked directly:
numbers as stored (a non-number shows as 0), layout order, issue marks, layer motif accents.
"""

from __future__ import annotations

from typing import Any

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
    layers = slot.layers() if slot is not None else []
    if slot is None or slot.event is None or not layers:
        return [
            GridRow(index, model.grid_orders[index], None, flagged=index in flagged_layers)
            for index in sorted(model.grid_orders)
        ]
    motifs = model.motifs_at(position) if show_motifs else None
    rows: list[GridRow] = []
    for layer in sorted(layers, key=lambda la: as_int(la.get("layer_index"), -1)):
        layer_index = as_int(layer.get("layer_index"), -1)
        probs = layer.get("router_probs")
        numbers = [as_float(p) for p in probs] if isinstance(probs, list) else None
        order = model.grid_orders.get(layer_index) or list(range(len(numbers or [])))
        topk = [
            t for t in as_list(layer.get("topk_indices")) if isinstance(t, int) and not isinstance(t, bool)
        ]
        experts = {
            i.location.expert_index
            for i in issues
            if i.location.layer_index == layer_index and i.location.expert_index is not None
        }
        entropy = layer.get("normalized_entropy")
        motif = motifs.layers.get(layer_index) if motifs is not None else None
        rows.append(
            GridRow(
                layer_index,
                order,
                numbers,
                topk,
                as_float(entropy) if isinstance(entropy, (int, float)) else None,
                layer_index in flagged_layers,
                {e for e in experts if e is not None},
                motif_colour=motif.colour(LAYER_COLOURS) if motif is not None else None,
                motif_fit_strength=model.motifs.strength(motif) if motif and model.motifs else 1.0,
                motif_novel=motif.novel if motif is not None else False,
            )
        )
    return rows
