"""Vectorised semantic checks (contract §4) over blocks of same-shaped layers.

A block stacks every layer of a chunk that shares (layer_index, num_total_experts,
num_active_experts, array lengths) into numpy arrays, so a chunk of 1,024 OLMoE tokens
is checked with a few dozen array operations instead of a Python loop per number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..versions import FLOAT_TOLERANCE
from .raw_event import Layer

TOL = FLOAT_TOLERANCE
_INDEX_CAP = 2**62  # larger indices are out of bounds anyway; keeps int64 arrays safe


@dataclass(slots=True)
class LayerBlock:
    """Same-shaped layers of several events; row r is layer ``layer_indices[r]`` of event ``rows[r]``."""

    layer_indices: np.ndarray
    n: int
    k: int
    rows: np.ndarray
    rp: np.ndarray
    ti: np.ndarray
    tp: np.ndarray
    entropy: np.ndarray
    normalized_entropy: np.ndarray
    top1_prob: np.ndarray
    margin: np.ndarray


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed check for one layer of one event (``row`` indexes the block)."""

    row: int
    code: str
    message: str
    expert_index: int | None = None


def build_block(layer_index: int, n: int, k: int, rows: Sequence[int], layers: Sequence[Layer]) -> LayerBlock:
    """Stack layers that share a shape key into arrays; ValueError if their lengths differ."""
    try:
        ti = np.array([layer.topk_indices for layer in layers], dtype=np.int64)
    except OverflowError:
        ti = np.array(
            [[max(min(v, _INDEX_CAP), -_INDEX_CAP) for v in layer.topk_indices] for layer in layers],
            dtype=np.int64,
        )
    scalars = np.array(
        [
            (layer.entropy, layer.normalized_entropy, layer.top1_prob, layer.top1_top2_margin)
            for layer in layers
        ],
        dtype=np.float64,
    )
    rp = np.array([layer.router_probs for layer in layers], dtype=np.float64)
    tp = np.array([layer.topk_probs for layer in layers], dtype=np.float64)
    if rp.ndim != 2 or tp.ndim != 2 or ti.ndim != 2:
        raise ValueError("layers of one block must share their array lengths")
    return LayerBlock(
        layer_indices=np.full(
            len(layers), layer_index, dtype=np.int64 if -(2**63) <= layer_index < 2**63 else object
        ),
        n=n,
        k=k,
        rows=np.asarray(rows, dtype=np.int64),
        rp=rp,
        ti=ti,
        tp=tp,
        entropy=scalars[:, 0],
        normalized_entropy=scalars[:, 1],
        top1_prob=scalars[:, 2],
        margin=scalars[:, 3],
    )


def _g(value: float) -> str:
    return f"{value:.9g}"


def check_block(block: LayerBlock) -> Iterator[Finding]:
    """Every contract §4 per-layer check on a block, in the contract's order."""
    rp, ti, tp, n, k = block.rp, block.ti, block.tp, block.n, block.k
    count, n_rp = rp.shape
    len_ti, len_tp = ti.shape[1], tp.shape[1]
    every = range(count)
    if n_rp != n:
        for r in every:
            yield Finding(
                r,
                "router_probs_length_mismatch",
                f"router_probs has {n_rp} entries but num_total_experts is {n}",
            )
    if k < 1:
        for r in every:
            yield Finding(
                r, "num_active_experts_must_be_positive", f"num_active_experts is {k}; it must be at least 1"
            )
    if k > n:
        for r in every:
            yield Finding(
                r,
                "num_active_experts_exceeds_num_total_experts",
                f"num_active_experts {k} exceeds num_total_experts {n}",
            )
    if len_ti != k or len_tp != k:
        for r in every:
            yield Finding(
                r,
                "topk_length_mismatch",
                f"topk_indices has {len_ti} and topk_probs {len_tp} entries; num_active_experts is {k}",
            )
    if len_ti != len_tp:
        for r in every:
            yield Finding(
                r,
                "topk_length_mismatch",
                f"topk_indices ({len_ti}) and topk_probs ({len_tp}) differ in length",
            )
    duplicate = np.zeros(count, dtype=bool)
    if len_ti >= 2:
        ordered = np.sort(ti, axis=1)
        same = ordered[:, 1:] == ordered[:, :-1]
        duplicate = same.any(axis=1)
        for r in np.flatnonzero(duplicate).tolist():
            value = int(ordered[r, 1:][same[r]][0])
            yield Finding(int(r), "duplicate_topk_index", f"topk_indices repeats expert {value}", value)
    outside = (ti < 0) | (ti >= n)
    out_of_bounds = outside.any(axis=1)
    for r in np.flatnonzero(out_of_bounds).tolist():
        value = int(ti[r][outside[r]][0])
        yield Finding(int(r), "topk_index_out_of_bounds", f"topk index {value} is outside [0, {n})")
    yield from _check_topk_probs(block, min(len_ti, len_tp))
    if len_ti == k and len_tp == k and n_rp == n and k >= 1:
        yield from _check_selection(block, ~duplicate & ~out_of_bounds)
    if n_rp == n:
        total = rp.sum(axis=1)
        for r in np.flatnonzero(np.abs(total - 1.0) > TOL).tolist():
            yield Finding(
                int(r),
                "router_probs_sum_mismatch",
                f"router_probs sum to {_g(total[r])}, not 1 (tolerance {TOL:g})",
            )
    peak = rp.max(axis=1)
    for r in np.flatnonzero(np.abs(block.top1_prob - peak) > TOL).tolist():
        yield Finding(
            int(r),
            "top1_prob_mismatch",
            f"top1_prob {_g(block.top1_prob[r])} but the largest router prob is {_g(peak[r])}",
            int(np.argmax(rp[r])),
        )
    if len_tp >= 2:
        expected = tp[:, 0] - tp[:, 1]
        for r in np.flatnonzero(np.abs(block.margin - expected) > TOL).tolist():
            yield Finding(
                int(r),
                "top1_top2_margin_mismatch",
                f"top1_top2_margin {_g(block.margin[r])} but topk_probs[0] - topk_probs[1] "
                f"is {_g(expected[r])}",
            )
    if n > 1:
        yield from _check_entropy(block)


def _check_topk_probs(block: LayerBlock, m: int) -> Iterator[Finding]:
    if m == 0:
        return
    rp, idx = block.rp, block.ti[:, :m]
    usable = (idx >= 0) & (idx < rp.shape[1])
    gathered = np.take_along_axis(rp, np.where(usable, idx, 0), axis=1)
    wrong = usable & (np.abs(block.tp[:, :m] - gathered) > TOL)
    for r in np.flatnonzero(wrong.any(axis=1)).tolist():
        j = int(np.flatnonzero(wrong[r])[0])
        expert = int(idx[r, j])
        yield Finding(
            int(r),
            "topk_prob_mismatch",
            f"topk_probs[{j}] is {_g(block.tp[r, j])} but router_probs[{expert}] is {_g(gathered[r, j])}",
            expert,
        )


def _check_selection(block: LayerBlock, eligible: np.ndarray) -> Iterator[Finding]:
    if not eligible.any():
        return
    rp, ti = block.rp, block.ti
    safe_ti = np.where(eligible[:, None], ti, np.arange(ti.shape[1])[None, :] % rp.shape[1])
    selected = np.take_along_axis(rp, safe_ti, axis=1)
    rising = np.asarray((selected[:, 1:] > selected[:, :-1] + TOL).any(axis=1))
    # an unselected expert beats the smallest selected one exactly when more experts clear
    # that bar than selected ones do (indices are distinct here)
    bar = selected.min(axis=1) + TOL
    beaten = (rp > bar[:, None]).sum(axis=1) > (selected > bar[:, None]).sum(axis=1)
    for r in np.flatnonzero(eligible & (rising | beaten)).tolist():
        if rising[r]:
            message = "selected experts' probabilities are not in non-increasing order"
            expert = None
        else:
            masked = rp[r].copy()
            masked[safe_ti[r]] = -np.inf
            expert = int(np.argmax(masked))
            message = (
                f"unselected expert {expert} (p={_g(masked[expert])}) beats the smallest "
                f"selected probability {_g(selected[r].min())}"
            )
        yield Finding(r, "topk_selection_mismatch", message, expert)


def _check_entropy(block: LayerBlock) -> Iterator[Finding]:
    rp = block.rp
    logs = np.zeros_like(rp)
    np.log(rp, out=logs, where=rp > 0)
    logs *= rp
    entropy = -logs.sum(axis=1)
    for r in np.flatnonzero(np.abs(block.entropy - entropy) > TOL).tolist():
        yield Finding(
            int(r), "entropy_mismatch", f"entropy {_g(block.entropy[r])} but -sum p ln p is {_g(entropy[r])}"
        )
    normalized = entropy / math.log(block.n)  # n may exceed any fixed-size integer
    for r in np.flatnonzero(np.abs(block.normalized_entropy - normalized) > TOL).tolist():
        yield Finding(
            int(r),
            "normalized_entropy_mismatch",
            f"normalized_entropy {_g(block.normalized_entropy[r])} but entropy / ln({block.n}) "
            f"is {_g(normalized[r])}",
        )
