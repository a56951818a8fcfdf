"""Routing semantics of contract v0.2: what each MoE layer computes, declared once per group.

A *group* is a set of MoE layers that share a shape (experts, k) and a rule: the score
function, how experts are selected from the scores (plus an optional per-layer bias, optionally
limited to the best groups of experts), and how the mixing weights follow from the selected
scores. The rules here are applied only to *check* what a bundle records; the recorded
selection and weights are the model's own and are never replaced by these recomputations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the default tolerance per stored float dtype (absolute, scaled by max(1, |value|))
DEFAULT_TOLERANCE: dict[str, float] = {
    "float64": 1e-6,
    "float32": 1e-5,
    "float16": 2e-3,
    "bfloat16": 1.6e-2,
}

#: what a score of each score function is called where it is shown
SCORE_NAMES: dict[str, str] = {
    "softmax": "softmax probability",
    "sigmoid": "sigmoid score",
    "sqrt_softplus": "sqrt-softplus score",
    "logits": "router logit",
    "unknown": "score",
}

PER_TOKEN_ROLES = ("selected", "weights", "scores")
PROMPT_ROLES = ("prompt_selected", "prompt_weights", "prompt_scores")


@dataclass(frozen=True, slots=True)
class Selection:
    rule: str  # topk | group_limited_topk | hash | unknown
    bias: bool
    n_group: int | None = None
    topk_group: int | None = None
    group_score: str | None = None  # max | top2_sum

    def describe(self) -> str:
        on = "scores + bias" if self.bias else "scores"
        if self.rule == "topk":
            return f"top-k of {on}"
        if self.rule == "group_limited_topk":
            return (
                f"top-k of {on} within the best {self.topk_group} of {self.n_group} expert groups "
                f"(group score: {self.group_score or 'max'})"
            )
        if self.rule == "hash":
            return "by a hash of the token id (recorded; not a function of the scores)"
        return "not declared (selection is recorded but cannot be checked)"


@dataclass(frozen=True, slots=True)
class Mixing:
    rule: str  # gather | renormalize | softmax_selected | unchecked
    scale: float = 1.0
    name: str | None = None
    #: applied to each selected score before the rule ("sigmoid": a router that selects on
    #: logits and weighs by their sigmoid)
    transform: str = "none"

    def describe(self) -> str:
        base = {
            "gather": "the selected scores",
            "renormalize": "the selected scores divided by their sum",
            "softmax_selected": "a softmax over the selected scores",
            "unchecked": f"{self.name or 'a rule'} (recorded, not recomputed)",
        }[self.rule]
        if self.transform == "sigmoid":
            base = base.replace("the selected scores", "the sigmoid of the selected scores")
        return base if self.scale == 1.0 else f"{base}, times {self.scale:g}"


@dataclass(frozen=True, slots=True)
class RoutingGroup:
    name: str
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    score_function: str
    selection: Selection
    mixing: Mixing
    shared_experts: int
    arrays: Mapping[str, str] = field(default_factory=dict)
    #: where in the decoder layer this router sits ("mlp" unless declared; a layer may have a
    #: router per site, e.g. JetMoE's attention and MLP mixtures)
    site: str = "mlp"

    def slot(self, layer_index: int) -> int:
        return self.layers.index(layer_index)

    @property
    def score_name(self) -> str:
        return SCORE_NAMES.get(self.score_function, "score")


@dataclass(frozen=True, slots=True)
class Routing:
    float_dtype: str
    tolerance: float
    groups: tuple[RoutingGroup, ...]

    def layer_indices(self) -> list[int]:
        return sorted(layer for group in self.groups for layer in group.layers)

    def group_of(self, layer_index: int, site: str = "mlp") -> RoutingGroup | None:
        for group in self.groups:
            if layer_index in group.layers and group.site == site:
                return group
        return None


def routing_of(manifest: Mapping[str, Any] | None) -> Routing | None:
    """The manifest's routing as typed values, or None when it is not usable (the schema says why)."""
    if not isinstance(manifest, Mapping):
        return None
    raw = manifest.get("routing")
    if not isinstance(raw, Mapping):
        return None
    try:
        dtype = str(raw["float_dtype"])
        tolerance = float(raw.get("tolerance", DEFAULT_TOLERANCE.get(dtype, 1e-5)))
        groups = tuple(_group_of(item) for item in raw["groups"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if dtype not in DEFAULT_TOLERANCE or not groups:
        return None
    return Routing(dtype, tolerance, groups)


def _group_of(item: Mapping[str, Any]) -> RoutingGroup:
    selection, mixing = item["selection"], item["mixing"]
    layers = tuple(int(_plain_int(i)) for i in item["layers"])
    arrays = item["arrays"]
    if not isinstance(arrays, Mapping) or not all(isinstance(v, str) for v in arrays.values()):
        raise TypeError("arrays")
    return RoutingGroup(
        name=str(item["name"]),
        layers=layers,
        num_experts=_plain_int(item["num_experts"]),
        top_k=_plain_int(item["top_k"]),
        score_function=str(item["score_function"]),
        selection=Selection(
            rule=str(selection["rule"]),
            bias=bool(selection["bias"]),
            n_group=_optional_int(selection.get("n_group")),
            topk_group=_optional_int(selection.get("topk_group")),
            group_score=selection.get("group_score"),
        ),
        mixing=Mixing(
            rule=str(mixing["rule"]),
            scale=float(mixing["scale"]),
            name=mixing.get("name"),
            transform=str(mixing.get("transform", "none")),
        ),
        shared_experts=_plain_int(item["shared_experts"]),
        arrays=dict(arrays),
        site=str(item.get("site", "mlp")),
    )


def _plain_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def _optional_int(value: object) -> int | None:
    return None if value is None else _plain_int(value)


def rule_problems(group: RoutingGroup) -> list[str]:
    """What makes a group's declared rule impossible (each a sentence); empty when it is sound."""
    problems: list[str] = []
    e, k, sel = group.num_experts, group.top_k, group.selection
    if k > e:
        problems.append(f"top_k {k} exceeds num_experts {e}")
    if sel.rule == "group_limited_topk":
        if sel.n_group is None or sel.topk_group is None:
            problems.append("group_limited_topk needs n_group and topk_group")
        else:
            if e % sel.n_group:
                problems.append(f"num_experts {e} is not a multiple of n_group {sel.n_group}")
            if sel.topk_group > sel.n_group:
                problems.append(f"topk_group {sel.topk_group} exceeds n_group {sel.n_group}")
            elif e % sel.n_group == 0 and k > sel.topk_group * (e // sel.n_group):
                problems.append(f"top_k {k} exceeds the experts in {sel.topk_group} groups")
            if sel.group_score == "top2_sum" and e // max(1, sel.n_group) < 2:
                problems.append("group_score top2_sum needs at least 2 experts per group")
    elif sel.n_group is not None or sel.topk_group is not None:
        problems.append(f"n_group/topk_group are only meaningful for group_limited_topk, not {sel.rule}")
    if sel.bias and "bias" not in group.arrays:
        problems.append("selection.bias is true but the group has no bias array")
    if not sel.bias and "bias" in group.arrays:
        problems.append("a bias array is given but selection.bias is false")
    if group.score_function == "unknown" and "scores" in group.arrays:
        problems.append("scores are recorded but score_function is unknown")
    if group.mixing.rule == "unchecked" and not group.mixing.name:
        problems.append("an unchecked mixing rule must be named (mixing.name)")
    for role in ("weights", "scores"):
        if f"prompt_{role}" in group.arrays and "prompt_selected" not in group.arrays:
            problems.append(f"prompt_{role} needs prompt_selected")
    return problems


# -- applying a rule (checks only) ---------------------------------------------------------------


def selection_keys(scores: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """What the selection ranks: the scores, plus the layer's bias where the rule has one."""
    keys = scores.astype(np.float32, copy=False)
    return keys if bias is None else keys + bias.astype(np.float32, copy=False)


def selection_violations(
    keys: np.ndarray, selected: np.ndarray, selection: Selection, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose selection the rule contradicts, and for each the expert that should have won.

    ``keys`` ``[N, E]`` (scores + bias), ``selected`` ``[N, k]`` valid indices (in range, no
    repeats). Ties within ``tol`` may resolve either way. Returns (bad row mask, expert [N]).
    """
    n, e = keys.shape
    sel_keys = np.take_along_axis(keys, selected, axis=1)
    threshold = sel_keys.min(axis=1) + tol
    beats = keys > threshold[:, None]
    rows = np.arange(n)[:, None]
    if selection.rule == "group_limited_topk" and selection.n_group and selection.topk_group:
        groups, keep = selection.n_group, selection.topk_group
        per = e // groups
        grouped = keys.reshape(n, groups, per)
        if selection.group_score == "top2_sum" and per >= 2:
            part = np.partition(grouped, per - 2, axis=2)
            group_scores = part[:, :, -2:].sum(axis=2, dtype=np.float32)
        else:
            group_scores = grouped.max(axis=2)
        kth = np.partition(group_scores, groups - keep, axis=1)[:, groups - keep]
        chosen_groups = selected // per
        eligible = group_scores > (kth + tol)[:, None]  # groups that had to be chosen
        eligible[rows, chosen_groups] = True
        beats &= np.repeat(eligible, per, axis=1)
        group_ok = np.take_along_axis(group_scores, chosen_groups, axis=1) >= (kth - tol)[:, None]
        distinct = _distinct_count(chosen_groups)
        group_bad = ~group_ok.all(axis=1) | (distinct > keep)
    else:
        group_bad = np.zeros(n, dtype=bool)
    selected_beating = (sel_keys > threshold[:, None]).sum(axis=1)
    bad = (beats.sum(axis=1) > selected_beating) | group_bad
    winners = np.full(n, -1, dtype=np.int64)
    if bad.any():
        masked = np.where(beats[bad], keys[bad], -np.inf)
        masked[np.arange(int(bad.sum()))[:, None], selected[bad]] = -np.inf
        best = masked.argmax(axis=1)
        found = np.isfinite(masked[np.arange(best.size), best])
        winners[np.flatnonzero(bad)] = np.where(found, best, -1)
    return bad, winners


def _distinct_count(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values, axis=1)
    counts: np.ndarray = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)
    return counts


def expected_weights(selected_scores: np.ndarray, mixing: Mixing) -> np.ndarray | None:
    """The weights the mixing rule gives for the selected scores ``[N, k]`` (float64), or None."""
    s = selected_scores.astype(np.float64)
    if mixing.transform == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-s))
    if mixing.rule == "gather":
        out = s
    elif mixing.rule == "renormalize":
        out = s / (s.sum(axis=1, keepdims=True) + 1e-20)
    elif mixing.rule == "softmax_selected":
        z = np.exp(s - s.max(axis=1, keepdims=True))
        out = z / z.sum(axis=1, keepdims=True)
    else:
        return None
    scaled: np.ndarray = out * mixing.scale
    return scaled
