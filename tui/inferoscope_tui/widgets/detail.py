"""The detail pane: the raw numbers behind the cursor, or the event's JSON as stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from inferoscope import LayerEvent, visible


def _g(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return visible(repr(value), 40)
    try:
        return f"{value:.{digits}g}"
    except OverflowError:  # an integer past any float: shown as its first digits
        return visible(str(value), 24)


SELECTED_MARK = "•"
LABEL = 9  # width of the label column: every line of the pane is "label  value"


def labelled(text: Text, label: str, value: str | Text, style: str = "") -> None:
    """One ``label  value`` line: short lines that never wrap mid-phrase in a half-width pane."""
    text.append(f"{label:<{LABEL - 1}} ", style="dim")
    if isinstance(value, Text):
        text.append_text(value)
    else:
        text.append(value, style=style)
    text.append("\n")


def _wrapped(words: list[str], width: int) -> list[str]:
    """``words`` joined by spaces into lines of at most ``width`` (a long word gets its own line)."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def layer_detail(
    event: LayerEvent | None,
    expert: int | None,
    issues: list[str],
    cell: list[int] | None = None,
    width: int = 38,
) -> Text:
    """The cursor layer's top-k, entropy and sharpness, and the cursor expert, one line each.

    ``cell``: the experts the grid packs into the cursor's cell, listed with their probabilities
    (the packed grid shows only the strongest of them). A contract v0.1.0 layer is shown with
    its values exactly as stored; a v0.2 layer with its recorded selection, weights and scores.
    """
    text = Text()
    if event is None:
        text.append("no layer data for this token\n", style="italic")
        return text
    if not event.stored:
        return _v02_detail(text, event, expert, issues, cell, width)
    layer = event.stored
    probs, topk, topk_probs = (
        _list(layer, "router_probs"),
        _list(layer, "topk_indices"),
        _list(layer, "topk_probs"),
    )
    labelled(
        text,
        f"layer {_g(layer.get('layer_index'))}",
        f"n={_g(layer.get('num_total_experts'))} k={_g(layer.get('num_active_experts'))}",
        "bold",
    )
    pairs = [f"{_g(e)}:{_g(p, 3)}" for e, p in zip(topk, topk_probs, strict=False)]
    for number, line in enumerate(_wrapped(pairs, width - LABEL)):
        labelled(text, "top-k" if number == 0 else "", line)
    labelled(text, "H", f"{_g(layer.get('entropy'))} nats · H/ln n {_g(layer.get('normalized_entropy'))}")
    labelled(text, "top1", f"{_g(layer.get('top1_prob'))} · margin {_g(layer.get('top1_top2_margin'))}")
    if expert is not None and 0 <= expert < len(probs):
        order = sorted(range(len(probs)), key=lambda i: (-_num(probs[i]), i))
        note = f" {SELECTED_MARK}" if expert in topk else ""
        labelled(
            text,
            f"expert {expert}",
            f"p={_g(probs[expert], 4)} · rank {order.index(expert) + 1}{note}",
            "bold",
        )
    if cell and len(cell) > 1:
        chosen = {e for e in topk if isinstance(e, int)}
        members = [
            f"{m}:{_g(probs[m] if 0 <= m < len(probs) else None, 3)}{SELECTED_MARK if m in chosen else ''}"
            for m in cell
        ]
        for number, line in enumerate(_wrapped(members, width - LABEL)):
            labelled(text, "cell" if number == 0 else "", line)
    for message in issues:
        text.append("! ", style="bold red")
        text.append(visible(message, 300) + "\n")
    return text


def _v02_detail(
    text: Text, layer: LayerEvent, expert: int | None, issues: list[str], cell: list[int] | None, width: int
) -> Text:
    name = layer.score_name
    labelled(text, f"layer {layer.layer_index}", f"n={layer.num_experts} k={len(layer.selected)}", "bold")
    unbounded = layer.score_function in ("sigmoid", "sqrt_softplus")
    labelled(text, "scores", name + (" (no sum to 1)" if unbounded else ""))
    if unbounded:
        labelled(text, "colour", "score share: score ÷ sum", "dim")
    if layer.shared_experts:
        labelled(text, "shared", f"{layer.shared_experts} always on (S), not routed", "dim")
    chosen = layer.selected_scores()
    pairs = [
        f"{e}:{_g(p, 3) if p is not None else '—'}" for e, p in zip(layer.selected, chosen, strict=False)
    ]
    for number, line in enumerate(_wrapped(pairs, width - LABEL)):
        labelled(text, "selected" if number == 0 else "", line)
    if layer.weights is not None:
        weights = [f"{e}:{_g(float(w), 3)}" for e, w in zip(layer.selected, layer.weights, strict=False)]
        for number, line in enumerate(_wrapped(weights, width - LABEL)):
            labelled(text, "weights" if number == 0 else "", line)
    else:
        labelled(text, "weights", "not recorded", "dim")
    entropy, normalized = layer.entropy(), layer.normalized_entropy()
    if entropy is not None:
        meaning = "" if layer.score_function == "softmax" else f" of {name}s / their sum"
        if layer.score_function == "logits":
            meaning = " of softmax(logits)"
        labelled(text, "H", f"{_g(entropy)} nats{meaning} · H/ln n {_g(normalized)}")
    scores = layer.scores
    if expert is not None and scores is not None and 0 <= expert < scores.size:
        order = sorted(range(scores.size), key=lambda i: (-float(scores[i]), i))
        note = f" {SELECTED_MARK}" if expert in layer.selected else ""
        labelled(
            text,
            f"expert {expert}",
            f"{_g(float(scores[expert]), 4)} · rank {order.index(expert) + 1}{note}",
            "bold",
        )
        keys = layer.selection_keys()
        if layer.bias is not None and keys is not None:  # what chose the experts: score + bias
            by_key = sorted(range(keys.size), key=lambda i: (-float(keys[i]), i))
            labelled(
                text,
                "+ bias",
                f"{_g(float(layer.bias[expert]), 3)} → {_g(float(keys[expert]), 4)} · "
                f"rank {by_key.index(expert) + 1} (chooses)",
            )
    if cell and len(cell) > 1 and scores is not None:
        members = [
            f"{m}:{_g(float(scores[m]) if 0 <= m < scores.size else None, 3)}"
            f"{SELECTED_MARK if m in layer.selected else ''}"
            for m in cell
        ]
        for number, line in enumerate(_wrapped(members, width - LABEL)):
            labelled(text, "cell" if number == 0 else "", line)
    if layer.problem:
        text.append("! ", style="bold red")
        text.append(visible(layer.problem, 300) + "\n")
    for message in issues:
        text.append("! ", style="bold red")
        text.append(visible(message, 300) + "\n")
    return text


def _list(layer: Mapping[str, Any], key: str) -> list[Any]:
    value = layer.get(key)
    return value if isinstance(value, list) else []


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


class DetailPane(VerticalScroll):
    """Numbers of the cursor's layer and expert; ``r`` toggles the raw stored JSON."""

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(id="detail-body")

    def on_mount(self) -> None:
        self.border_title = "detail"

    def show(self, content: Text) -> None:
        self.query_one("#detail-body", Static).update(content)
