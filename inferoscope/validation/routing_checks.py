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

from ..routing import RoutingGroup, expected_weights, selection_violations
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
    """Every v0.2 value rule on one block. Each rule is first checked for the whole block with
    whole-array reductions and one BLAS product per row sum; rows are looked at one by one only
    when the block breaks the rule, to locate and describe each offender."""
    group = block.group
    t, lg, k = block.selected.shape
    e = group.num_experts
    rows = t * lg
    found = BlockFindings()
    if rows == 0:
        found.usable = np.zeros(0, dtype=bool)
        return found
    selected = np.empty((rows, k), dtype=np.intp)
    np.copyto(selected, block.selected.reshape(rows, k))  # (much faster than astype for int16)
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

    sound = _check_selected(selected, e, report, at)
    all_sound = bool(sound.all())
    safe = selected if all_sound else np.where(sound[:, None], selected, np.arange(k)[None, :] % e)
    usable: np.ndarray = sound.copy()
    ones_k = np.ones(k, dtype=np.float64)

    weights = None if block.weights is None else block.weights.reshape(rows, k)
    weights_finite = True
    if weights is not None and not np.isfinite(weights).all():
        weights_finite = False
        bad_w = ~np.isfinite(weights).all(axis=1)
        report("value_not_finite", bad_w, "weights", lambda r: f"{at(r)}: a mixing weight is not finite")
        usable &= ~bad_w

    if block.scores is None:
        found.usable = usable
        return found
    scores = block.scores.reshape(rows, e)
    if scores.dtype != np.float32 and scores.dtype != np.float64:
        scores = scores.astype(np.float32)
    ones_e = np.ones(e, dtype=scores.dtype)
    finite_rows: np.ndarray | None = None
    if not np.isfinite(scores).all():
        finite_rows = np.isfinite(scores).all(axis=1)
        bad_expert = np.where(finite_rows, 0, (~np.isfinite(scores)).argmax(axis=1))
        report(
            "value_not_finite",
            ~finite_rows,
            "scores",
            lambda r: f"{at(r)}: score of expert {int(bad_expert[r])} is {scores[r, bad_expert[r]]}",
            bad_expert,
        )
        usable &= finite_rows
        scores = np.where(finite_rows[:, None], scores, 0).astype(scores.dtype)
    checkable = sound if finite_rows is None else sound & finite_rows
    if group.score_function in ("softmax", "sigmoid") and (scores.min() < -tol or scores.max() > 1 + tol):
        low, high = scores.min(axis=1), scores.max(axis=1)
        out_range = (low < -tol) | (high > 1 + tol)
        if finite_rows is not None:
            out_range &= finite_rows
        worst = np.where(low < -tol, scores.argmin(axis=1), scores.argmax(axis=1))
        report(
            "score_out_of_range",
            out_range,
            "scores",
            lambda r: f"{at(r)}: score of expert {int(worst[r])} is {float(scores[r, worst[r]]):.6g}",
            worst,
        )
    if group.score_function == "softmax":
        sums = scores @ ones_e
        bad_sum = np.abs(sums - 1.0) > tol
        if bad_sum.any():
            if finite_rows is not None:
                bad_sum &= finite_rows
            report("score_sum_mismatch", bad_sum, "scores", lambda r: f"{at(r)}: scores sum to {sums[r]:.9g}")
    flat = safe + (np.arange(rows, dtype=np.intp) * e)[:, None]
    chosen = scores.ravel()[flat]
    if group.selection.rule in ("topk", "group_limited_topk"):
        if block.bias is None:
            keys, chosen_keys = scores, chosen
        else:
            bias = np.broadcast_to(block.bias[None].astype(scores.dtype), (t, lg, e)).reshape(rows, e)
            keys = scores + bias
            chosen_keys = keys.ravel()[flat]
        if group.selection.rule == "topk":
            threshold = _row_min(chosen_keys) + tol
            above_mask = np.empty(keys.shape, dtype=scores.dtype)
            np.greater(keys, threshold[:, None], out=above_mask, casting="unsafe")
            above = above_mask @ ones_e
            chosen_above = np.greater(chosen_keys, threshold[:, None]) @ ones_k
            bad_sel = (above > chosen_above) & checkable
            suspects = bad_sel
        else:
            suspects = checkable
        if suspects.any():
            picked = np.flatnonzero(suspects)
            bad_part, winner_part = selection_violations(keys[picked], safe[picked], group.selection, tol)
            bad_sel = np.zeros(rows, dtype=bool)
            bad_sel[picked] = bad_part
            winners = np.full(rows, -1, dtype=np.int64)
            winners[picked] = winner_part
            kth = _row_min(chosen_keys)
            report(
                "selection_mismatch",
                bad_sel,
                "selected",
                lambda r: _selection_detail(at(r), int(winners[r]), keys[r], float(kth[r]), group),
                winners,
            )
    if weights is not None and group.mixing.rule != "unchecked":
        expected = expected_weights(chosen, group.mixing)
        if expected is not None:
            gap = np.abs(weights.astype(np.float64) - expected)
            wrong = gap > tol * np.maximum(1.0, np.abs(expected))
            if wrong.any():
                bad_mix = wrong.any(axis=1) & checkable
                if not weights_finite:
                    bad_mix &= np.isfinite(weights).all(axis=1)
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


def _check_selected(
    selected: np.ndarray, e: int, report: Callable[..., None], at: Callable[[int], str]
) -> np.ndarray:
    """Rows whose selection is in range and has no repeats (the others are reported)."""
    rows, k = selected.shape
    sound = np.ones(rows, dtype=bool)
    if selected.min() < 0 or selected.max() >= e:
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
        sound &= ~out_rows
    inside = selected if sound.all() else np.where(sound[:, None], selected, np.arange(k)[None, :] % e)
    if k > 1 and _has_duplicates(inside, e):
        ordered = np.sort(selected, axis=1)
        repeats = np.diff(ordered, axis=1) == 0
        dup_rows = repeats.any(axis=1) & sound
        dup_expert = np.where(dup_rows, ordered[np.arange(rows), repeats.argmax(axis=1)], 0)
        report(
            "duplicate_selected_index",
            dup_rows,
            "selected",
            lambda r: f"{at(r)}: expert {int(dup_expert[r])} is selected more than once",
            dup_expert,
        )
        sound &= ~dup_rows
    return sound


def _row_min(values: np.ndarray) -> np.ndarray:
    """Minimum of each row of a narrow ``[rows, k]`` array (column by column: numpy's row
    reduction is slow for short rows)."""
    low = values[:, 0].copy()
    for column in range(1, values.shape[1]):
        np.minimum(low, values[:, column], out=low)
    return low


def _has_duplicates(selected: np.ndarray, e: int) -> bool:
    """Whether any row repeats an expert (indices already in [0, e))."""
    if e <= 64:  # one bit per expert: OR the k bits of a row, count them
        bits = np.left_shift(np.uint64(1), selected.astype(np.uint64))
        merged = bits[:, 0].copy()
        for column in range(1, bits.shape[1]):
            np.bitwise_or(merged, bits[:, column], out=merged)
        return bool((np.bitwise_count(merged) != selected.shape[1]).any())
    columns = np.ascontiguousarray(selected.T)
    for i in range(len(columns)):
        for j in range(i + 1, len(columns)):
            if (columns[i] == columns[j]).any():
                return True
    return False


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
    """``-sum p ln p`` per row (nats), for rows of probabilities (0 ln 0 = 0)."""
    p = scores.astype(np.float32, copy=False)
    logs = np.maximum(p, np.finfo(np.float32).tiny)  # the one temporary: log and product in place
    np.log(logs, out=logs)
    np.multiply(logs, p, out=logs)
    entropy: np.ndarray = -(logs @ np.ones(p.shape[1], dtype=np.float32)).astype(np.float64)
    return entropy
