"""Contract v0.2 value checks, vectorised over a block of tokens of one routing group.

Every check works on ``[tokens * layers, experts]`` rows at once; an issue is built only for
the rows that fail (and at most ``MAX_ISSUES_PER_CODE`` per block and code: the rest are
counted, so a run where every token is wrong costs the same as a clean one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..routing import RoutingGroup, expected_weights, selection_keys, selection_violations
from .issues import Location, ValidationIssue, layer_scope
from .messages import contract_message

MAX_ISSUES_PER_CODE = 200


@dataclass(slots=True)
class BlockFindings:
    issues: list[ValidationIssue] = field(default_factory=list)
    overflow: Counter[str] = field(default_factory=Counter)
    #: per row that passed the structural checks: whether the row may be aggregated
    usable: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Block:
    """Rows ``[first, first + tokens)`` of one group's arrays (None where the role is absent)."""

    group: RoutingGroup
    first: int
    selected: np.ndarray  # [t, Lg, k] integers
    weights: np.ndarray | None  # [t, Lg, k]
    scores: np.ndarray | None  # [t, Lg, E]
    bias: np.ndarray | None  # [Lg, E]
    files: dict[str, str]  # role -> array file (for locations)
    prompt: bool = False  # rows are prompt positions, not generated tokens


def check_block(block: Block, tol: float) -> BlockFindings:
    group = block.group
    t, lg, k = block.selected.shape
    e = group.num_experts
    rows = t * lg
    found = BlockFindings()
    if rows == 0:
        found.usable = np.zeros(0, dtype=bool)
        return found
    selected = block.selected.reshape(rows, k).astype(np.int64)
    layer_of = np.tile(np.asarray(group.layers, dtype=np.int64), t)
    token_of = np.repeat(np.arange(block.first, block.first + t, dtype=np.int64), lg)

    def report(
        code: str, bad: Any, role: str, detail: Callable[[int], str], expert: np.ndarray | None = None
    ) -> None:
        picked = np.flatnonzero(np.asarray(bad))
        if picked.size == 0:
            return
        shown = picked[:MAX_ISSUES_PER_CODE]
        if picked.size > shown.size:
            found.overflow[code] += int(picked.size - shown.size)
        for row in shown.tolist():
            layer = int(layer_of[row])
            found.issues.append(
                ValidationIssue(
                    scope=layer_scope(layer),
                    code=code,
                    message=contract_message(code),
                    detail=detail(row),
                    location=Location(
                        file=block.files.get(role),
                        token_index=None if block.prompt else int(token_of[row]),
                        layer_index=layer,
                        expert_index=None if expert is None else _int_or_none(expert[row]),
                    ),
                )
            )

    where = "prompt position" if block.prompt else "token"

    def at(row: int) -> str:
        return f"{where} {int(token_of[row])}, layer {int(layer_of[row])}"

    # selected: in range, no repeats
    out = (selected < 0) | (selected >= e)
    out_rows = out.any(axis=1)
    first_out = np.where(out_rows, selected[np.arange(rows), out.argmax(axis=1)], 0)
    report(
        "selected_index_out_of_bounds",
        out_rows,
        "selected",
        lambda r: f"{at(r)}: selected expert {int(first_out[r])} is outside [0, {e})",
        first_out,
    )
    ordered = np.sort(selected, axis=1)
    repeats = (np.diff(ordered, axis=1) == 0) if k > 1 else np.zeros((rows, 0), dtype=bool)
    dup_rows = repeats.any(axis=1) & ~out_rows
    dup_expert = np.where(dup_rows, ordered[np.arange(rows), repeats.argmax(axis=1) if k > 1 else 0], 0)
    report(
        "duplicate_selected_index",
        dup_rows,
        "selected",
        lambda r: f"{at(r)}: expert {int(dup_expert[r])} is selected more than once",
        dup_expert,
    )
    sound: np.ndarray = np.asarray(~(out_rows | dup_rows))
    usable: np.ndarray = sound.copy()

    weights = None if block.weights is None else block.weights.reshape(rows, k)
    if weights is not None:
        bad_w = ~np.isfinite(weights).all(axis=1)
        report("value_not_finite", bad_w, "weights", lambda r: f"{at(r)}: a mixing weight is not finite")
        usable &= ~bad_w

    if block.scores is None:
        found.usable = usable
        return found
    scores = block.scores.reshape(rows, e)
    finite_rows = np.isfinite(scores).all(axis=1)
    if not finite_rows.all():
        bad_expert = np.where(finite_rows, 0, (~np.isfinite(scores)).argmax(axis=1))
        report(
            "value_not_finite",
            ~finite_rows,
            "scores",
            lambda r: f"{at(r)}: score of expert {int(bad_expert[r])} is {scores[r, bad_expert[r]]}",
            bad_expert,
        )
        usable &= finite_rows
        scores = np.where(finite_rows[:, None], scores, 0.0).astype(scores.dtype)
    if group.score_function in ("softmax", "sigmoid"):
        low, high = scores.min(axis=1), scores.max(axis=1)
        out_range = ((low < -tol) | (high > 1 + tol)) & finite_rows
        if out_range.any():
            worst = np.where(low < -tol, scores.argmin(axis=1), scores.argmax(axis=1))
            report(
                "score_out_of_range",
                out_range,
                "scores",
                lambda r: f"{at(r)}: score of expert {int(worst[r])} is {float(scores[r, worst[r]]):.6g}",
                worst,
            )
    if group.score_function == "softmax":
        sums = scores.sum(axis=1, dtype=np.float64)
        bad_sum = (np.abs(sums - 1.0) > tol) & finite_rows
        report("score_sum_mismatch", bad_sum, "scores", lambda r: f"{at(r)}: scores sum to {sums[r]:.9g}")
    safe = np.where(sound[:, None], selected, np.arange(k)[None, :] % e)
    checkable = sound & finite_rows
    if group.selection.rule != "unknown":
        bias = None
        if block.bias is not None:
            bias = np.broadcast_to(block.bias[None], (t, lg, e)).reshape(rows, e)
        keys = selection_keys(scores, bias)
        bad_sel, winners = selection_violations(keys, safe, group.selection, tol)
        bad_sel &= checkable
        kth = np.take_along_axis(keys, safe, axis=1).min(axis=1)
        report(
            "selection_mismatch",
            bad_sel,
            "selected",
            lambda r: _selection_detail(at(r), int(winners[r]), keys[r], float(kth[r]), group),
            winners,
        )
    if weights is not None and group.mixing.rule != "unchecked":
        chosen = np.take_along_axis(scores, safe, axis=1)
        expected = expected_weights(chosen, group.mixing)
        if expected is not None:
            gap = np.abs(weights.astype(np.float64) - expected)
            wrong = gap > tol * np.maximum(1.0, np.abs(expected))
            bad_mix = wrong.any(axis=1) & checkable & np.isfinite(weights).all(axis=1)
            slot = wrong.argmax(axis=1)
            expert = safe[np.arange(rows), slot]
            report(
                "weight_mismatch",
                bad_mix,
                "weights",
                lambda r: (
                    f"{at(r)}: weight of expert {int(expert[r])} is {float(weights[r, slot[r]]):.7g}, "
                    f"the rule ({group.mixing.describe()}) gives {float(expected[r, slot[r]]):.7g}"
                ),
                expert,
            )
    found.usable = usable
    return found


def _selection_detail(where: str, winner: int, keys: np.ndarray, kth: float, group: RoutingGroup) -> str:
    ranked = "score + bias" if group.selection.bias else "score"
    if winner < 0:
        return f"{where}: the selected experts span groups the rule ({group.selection.describe()}) excludes"
    return (
        f"{where}: expert {winner} has {ranked} {float(keys[winner]):.7g}, above the lowest selected "
        f"{kth:.7g}, but is not selected ({group.selection.describe()})"
    )


def _int_or_none(value: object) -> int | None:
    number = int(value)  # type: ignore[call-overload]
    return number if number >= 0 else None


def softmax_entropy(scores: np.ndarray) -> np.ndarray:
    """``-sum p ln p`` per row (nats), for rows of probabilities."""
    p = scores.astype(np.float32, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.where(p > 0, p, 1.0))
    entropy: np.ndarray = -(p * logs).sum(axis=1, dtype=np.float64)
    return entropy
