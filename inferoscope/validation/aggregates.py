"""Run-level numbers gathered during the validation pass, so nothing is read twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class LayerAggregate:
    """Per MoE layer over the whole run: expert load of top-k picks and entropy means."""

    layer_index: int
    num_total_experts: int
    num_active_experts: int
    tokens: int = 0
    entropy_sum: float = 0.0
    normalized_entropy_sum: float = 0.0
    load: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    top1_load: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    coactivation: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    #: per-token parts in arrival order: (event positions, top-k indices, normalized entropy)
    token_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def mean_entropy(self) -> float | None:
        return self.entropy_sum / self.tokens if self.tokens else None

    @property
    def mean_normalized_entropy(self) -> float | None:
        return self.normalized_entropy_sum / self.tokens if self.tokens else None

    def never_selected(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.load == 0)]

    def ranked_experts(self) -> list[int]:
        """Experts by descending load, ties to the lower index."""
        return [int(i) for i in np.lexsort((np.arange(self.load.size), -self.load))]

    def token_series(self, events: int) -> tuple[np.ndarray, np.ndarray]:
        """(top-k indices [events, k] with -1, normalized entropy [events] with NaN) by position.

        Positions without a usable entry for this layer (unreadable or flagged) stay -1 / NaN.
        """
        topk = np.full((events, self.num_active_experts), -1, dtype=np.int16)
        entropy = np.full(events, np.nan, dtype=np.float32)
        for positions, picks, values in self.token_parts:
            inside = positions < events
            if picks.shape[1] == self.num_active_experts:
                topk[positions[inside]] = picks[inside]
            entropy[positions[inside]] = values[inside]
        return topk, entropy

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer_index": self.layer_index,
            "num_total_experts": self.num_total_experts,
            "num_active_experts": self.num_active_experts,
            "tokens": self.tokens,
            "mean_entropy": self.mean_entropy,
            "mean_normalized_entropy": self.mean_normalized_entropy,
            "expert_load": self.load.tolist(),
            "top1_load": self.top1_load.tolist(),
            "never_selected": self.never_selected(),
        }


@dataclass(slots=True)
class RunAggregates:
    """Aggregates of one pass over raw_trace.ndjson."""

    events: int = 0
    readable_events: int = 0
    layers: dict[int, LayerAggregate] = field(default_factory=dict)
    duration_min: float | None = None
    duration_max: float | None = None
    duration_sum: float = 0.0
    duration_count: int = 0

    def add_durations(self, durations: np.ndarray) -> None:
        if durations.size == 0:
            return
        low, high = float(durations.min()), float(durations.max())
        self.duration_min = low if self.duration_min is None else min(self.duration_min, low)
        self.duration_max = high if self.duration_max is None else max(self.duration_max, high)
        for value in durations.tolist():  # in file order, as a plain Python sum would
            self.duration_sum += value
        self.duration_count += int(durations.size)

    def add_rows(
        self,
        layer_indices: np.ndarray,
        n: int,
        k: int,
        topk: np.ndarray,
        entropy: np.ndarray,
        normalized_entropy: np.ndarray,
        positions: np.ndarray | None = None,
    ) -> None:
        """Fold in rows of several layers at once (one bincount for all of them).

        ``positions`` (event positions of the rows) keeps per-token series for run-level views.
        """
        if layer_indices.size == 0:
            return
        layers, inverse = np.unique(layer_indices, return_inverse=True)
        inverse = inverse.astype(np.int64)
        count = len(layers)
        tokens = np.bincount(inverse, minlength=count)
        entropy_sums = np.bincount(inverse, weights=entropy, minlength=count)
        normalized_sums = np.bincount(inverse, weights=normalized_entropy, minlength=count)
        if topk.shape[1]:
            load = np.bincount((inverse[:, None] * n + topk).ravel(), minlength=count * n).reshape(count, n)
            top1 = np.bincount(inverse * n + topk[:, 0], minlength=count * n).reshape(count, n)
            pairs = (inverse[:, None, None] * n * n + topk[:, :, None] * n + topk[:, None, :]).ravel()
            coact = np.bincount(pairs, minlength=count * n * n).reshape(count, n, n)
        for u, layer_index in enumerate(layers.tolist()):
            agg = self.layers.get(layer_index)
            if agg is None:
                agg = LayerAggregate(
                    layer_index,
                    n,
                    k,
                    load=np.zeros(n, dtype=np.int64),
                    top1_load=np.zeros(n, dtype=np.int64),
                    coactivation=np.zeros((n, n), dtype=np.int64),
                )
                self.layers[layer_index] = agg
            if agg.num_total_experts != n:
                continue
            agg.tokens += int(tokens[u])
            agg.entropy_sum += float(entropy_sums[u])
            agg.normalized_entropy_sum += float(normalized_sums[u])
            if topk.shape[1]:
                agg.load += load[u]
                agg.top1_load += top1[u]
                agg.coactivation += coact[u]
            if positions is not None:
                mine = inverse == u
                agg.token_parts.append(
                    (
                        positions[mine].astype(np.int64),
                        topk[mine].astype(np.int16),
                        normalized_entropy[mine].astype(np.float32),
                    )
                )

    def absorb(self, other: RunAggregates) -> None:
        """Fold in the aggregates of a later part of the same file (its positions shift by ours)."""
        shift = self.events
        for theirs in other.layers.values():
            theirs.token_parts = [(p + shift, t, e) for p, t, e in theirs.token_parts]
        self.events += other.events
        self.readable_events += other.readable_events
        if other.duration_count:
            self.duration_min = (
                other.duration_min
                if self.duration_min is None
                else min(self.duration_min, other.duration_min or 0.0)
            )
            self.duration_max = (
                other.duration_max
                if self.duration_max is None
                else max(self.duration_max, other.duration_max or 0.0)
            )
            self.duration_sum += other.duration_sum
            self.duration_count += other.duration_count
        for index, theirs in other.layers.items():
            mine = self.layers.get(index)
            if mine is None:
                self.layers[index] = theirs
            elif mine.num_total_experts == theirs.num_total_experts:
                mine.tokens += theirs.tokens
                mine.entropy_sum += theirs.entropy_sum
                mine.normalized_entropy_sum += theirs.normalized_entropy_sum
                mine.load += theirs.load
                mine.top1_load += theirs.top1_load
                mine.coactivation += theirs.coactivation
                mine.token_parts.extend(theirs.token_parts)

    @property
    def duration_mean(self) -> float | None:
        return self.duration_sum / self.duration_count if self.duration_count else None
