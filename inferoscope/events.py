"""One typed event for every consumer: a token and its routing per MoE layer, from either contract.

``TokenEvent`` is tolerant: an unreadable event or layer is still an object, with ``problem``
saying what is wrong, so a view can show the rest. Nothing here validates (the validator does);
nothing here recomputes what the model chose: ``selected`` and ``weights`` are as recorded.
Display quantities (entropy, margin) are derived from ``scores`` by their stated definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .routing import SCORE_NAMES


@dataclass(frozen=True, slots=True)
class LayerEvent:
    """One MoE layer of one token."""

    layer_index: int | None
    num_experts: int | None
    #: the experts the model used, in its order (as recorded; never recomputed)
    selected: tuple[int, ...] = ()
    #: the mixing weights it applied, one per selected expert; None where not recorded
    weights: np.ndarray | None = None
    #: the router's own score over every routed expert; None where not recorded (top-k only)
    scores: np.ndarray | None = None
    score_function: str = "softmax"
    #: contract v0.1.0 only: the layer object exactly as stored (views show its values verbatim)
    stored: Mapping[str, Any] = field(default_factory=dict)
    #: why (part of) this layer cannot be read; its other fields hold what could be
    problem: str | None = None
    #: where the router sits in its decoder layer (v0.2 groups may route a layer at two sites)
    site: str = "mlp"
    #: the layer's selection bias (v0.2 routers that select on score + bias), one per expert
    bias: np.ndarray | None = None
    #: experts every token uses besides the routed ones (always on; not in the scores)
    shared_experts: int = 0

    def selection_keys(self) -> np.ndarray | None:
        """What chose the experts: the scores, plus the selection bias where the router adds one."""
        if self.scores is None:
            return None
        keys = self.scores.astype(np.float64)
        return keys if self.bias is None or self.bias.shape != keys.shape else keys + self.bias

    @property
    def score_name(self) -> str:
        return SCORE_NAMES.get(self.score_function, "score")

    def distribution(self) -> np.ndarray | None:
        """The scores as a distribution over experts, by the score function's definition:
        softmax: the scores; logits: their softmax; sigmoid: the scores divided by their sum
        (how the router's scores spread, not a probability it computed)."""
        if self.scores is None or self.scores.size == 0 or not np.isfinite(self.scores).all():
            return None
        scores = self.scores.astype(np.float64)
        if self.score_function == "logits":
            z = np.exp(scores - scores.max())
            softmax: np.ndarray = z / z.sum()
            return softmax
        if self.score_function in ("sigmoid", "sqrt_softplus"):
            total = float(scores.sum())
            share: np.ndarray = scores / total
            return share if total > 0 else None
        if self.score_function == "softmax":
            return scores
        return None

    def entropy(self) -> float | None:
        """``-sum p ln p`` of ``distribution()`` (v0.1.0: the stored value), in nats."""
        if self.stored:
            return _number(self.stored.get("entropy"))
        p = self.distribution()
        if p is None:
            return None
        nz = p[p > 0]
        return float(-(nz * np.log(nz)).sum())

    def normalized_entropy(self) -> float | None:
        if self.stored:
            return _number(self.stored.get("normalized_entropy"))
        h = self.entropy()
        if h is None or not self.num_experts:
            return None
        return h / math.log(self.num_experts) if self.num_experts > 1 else 0.0

    def selected_scores(self) -> list[float | None]:
        """The score of each selected expert (v0.1.0: the stored ``topk_probs``)."""
        if self.stored:
            topk = self.stored.get("topk_probs")
            return [_number(p) for p in topk] if isinstance(topk, list) else []
        if self.scores is None:
            return [None] * len(self.selected)
        n = self.scores.size
        return [float(self.scores[e]) if 0 <= e < n else None for e in self.selected]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated (or teacher-forced) token and its routing, from either contract."""

    position: int
    token_index: int | None
    token_id: int | None
    token_text: str | None
    context_length: int | None
    timing: tuple[float, float, float] | None  # decode start, end, duration (ms)
    layers: tuple[LayerEvent, ...]
    profile: str = "v0.1"
    document_index: int | None = None
    source: str | None = None
    problem: str | None = None  # what could not be read
    readable: bool = True  # False: not even a JSON object (every other field is empty)

    def layer(self, layer_index: int) -> LayerEvent | None:
        for layer in self.layers:
            if layer.layer_index == layer_index:
                return layer
        return None


def unreadable(position: int, problem: str) -> TokenEvent:
    return TokenEvent(position, None, None, None, None, None, (), problem=problem, readable=False)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _timing(value: Any) -> tuple[float, float, float] | None:
    if not isinstance(value, Mapping):
        return None
    parts = [_number(value.get(k)) for k in ("decode_start", "decode_end", "decode_duration")]
    if any(p is None for p in parts):
        return None
    return (parts[0], parts[1], parts[2])  # type: ignore[return-value]


def meta_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The per-token fields both contracts share, tolerant of any type."""
    return {
        "token_index": _int(obj.get("token_index")),
        "token_id": _int(obj.get("token_id")),
        "token_text": _str(obj.get("token_text")),
        "context_length": _int(obj.get("context_length")),
        "timing": _timing(obj.get("timing_ms")),
        "document_index": _int(obj.get("document_index")),
        "source": _str(obj.get("source")),
    }


def from_v01(position: int, obj: Any) -> TokenEvent:
    """A contract v0.1.0 event dict (as parsed; possibly schema-invalid)."""
    if not isinstance(obj, Mapping):
        return unreadable(position, "not a JSON object")
    raw_layers = obj.get("layers")
    layers: list[LayerEvent] = []
    for item in raw_layers if isinstance(raw_layers, list) else []:
        layers.append(_v01_layer(item))
    layers.sort(key=lambda la: -1 if la.layer_index is None else la.layer_index)
    problem = None if isinstance(raw_layers, list) else "layers is missing or not a list"
    return TokenEvent(position, layers=tuple(layers), profile="v0.1", problem=problem, **meta_fields(obj))


def _v01_layer(item: Any) -> LayerEvent:
    if not isinstance(item, Mapping):
        return LayerEvent(None, None, problem="layer is not a JSON object")
    problems: list[str] = []
    probs = item.get("router_probs")
    scores = None
    if isinstance(probs, list):
        values = [_number(p) for p in probs]
        if any(v is None for v in values):
            problems.append("router_probs holds a value that is not a number")
        scores = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
    else:
        problems.append("router_probs is not a list")
    picks = item.get("topk_indices")
    selected: tuple[int, ...] = ()
    if isinstance(picks, list):
        selected = tuple(p for p in picks if _int(p) is not None)
        if len(selected) != len(picks):
            problems.append("topk_indices holds a value that is not an integer")
    else:
        problems.append("topk_indices is not a list")
    return LayerEvent(
        layer_index=_int(item.get("layer_index")),
        num_experts=_int(item.get("num_total_experts")),
        selected=selected,
        weights=None,
        scores=scores,
        score_function="softmax",
        stored=item,
        problem="; ".join(problems) or None,
    )
