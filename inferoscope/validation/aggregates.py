"""Run-level numbers gathered during the validation pass, so nothing is read twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DENSE_MAX = 256


@dataclass(slots=True)
class PairCounts:
    """How many tokens picked both experts of a pair (a < b), kept for the pairs that occur only.

    Memory grows with the distinct pairs a run produces (at most tokens x k² / 2), never with
    experts²: a layer of 100,000 experts costs what its picks cost, not 80 GB of zeros.
    """

    experts: int
    #: layers of up to DENSE_MAX experts keep a full matrix (fast, and small: 512 KB at 256)
    matrix: np.ndarray | None = None
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # a * experts + b
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _pending_size: int = 0

    def __post_init__(self) -> None:
        if self.matrix is None and 0 < self.experts <= DENSE_MAX:
            self.matrix = np.zeros((self.experts, self.experts), dtype=np.int64)

    def add_matrix(self, counts: np.ndarray) -> None:
        """Add a full ``[experts, experts]`` count matrix (the dense path's batched bincount)."""
        assert self.matrix is not None
        self.matrix += counts

    def add_picks(self, topk: np.ndarray) -> None:
        """Count the pairs of every row of top-k picks ``[rows, k]`` (distinct, in range)."""
        if topk.ndim != 2 or topk.shape[1] < 2 or topk.shape[0] == 0:
            return
        picks = topk.astype(np.int64)
        first, second = picks[:, :, None], picks[:, None, :]
        low, high = np.minimum(first, second), np.maximum(first, second)
        upper = np.triu(np.ones((picks.shape[1], picks.shape[1]), dtype=bool), k=1)
        if self.matrix is not None:  # the full symmetric count, as the batched path makes it
            every = (first * self.experts + second).ravel()
            self.matrix += np.bincount(every, minlength=self.experts * self.experts).reshape(
                self.matrix.shape
            )
            return
        codes = (low * self.experts + high)[:, upper].ravel()
        self._add(codes, np.ones(codes.size, dtype=np.int64))

    def absorb(self, other: PairCounts) -> None:
        if self.matrix is not None and other.matrix is not None:
            self.matrix += other.matrix
            return
        other.compact()
        self._add(other.codes, other.counts)

    def _add(self, codes: np.ndarray, counts: np.ndarray) -> None:
        if codes.size == 0:
            return
        self._pending.append((codes, counts))
        self._pending_size += codes.size
        if self._pending_size > max(1 << 20, 2 * self.codes.size):
            self.compact()

    def compact(self) -> None:
        """Fold pending pairs into the sorted unique codes and their counts."""
        if self.matrix is not None:
            upper = np.triu(self.matrix, k=1)  # symmetric: (a, b) and (b, a) both hold the count
            self.codes = np.flatnonzero(upper).astype(np.int64)
            self.counts = upper.ravel()[self.codes]
            return
        if not self._pending:
            return
        codes = np.concatenate([self.codes, *(c for c, _ in self._pending)])
        weights = np.concatenate([self.counts, *(w for _, w in self._pending)])
        self.codes, inverse = np.unique(codes, return_inverse=True)
        self.counts = np.bincount(inverse.ravel(), weights=weights, minlength=self.codes.size).astype(
            np.int64
        )
        self._pending, self._pending_size = [], 0

    def top(self, count: int) -> list[tuple[int, int, int]]:
        """The ``count`` most frequent pairs (a, b, tokens), ties to the lower pair."""
        self.compact()
        order = np.lexsort((self.codes, -self.counts))[:count]
        return [
            (int(c // self.experts), int(c % self.experts), int(n))
            for c, n in zip(self.codes[order], self.counts[order], strict=True)
        ]

    def together(self, a: int, b: int) -> int:
        """Tokens that picked both ``a`` and ``b``."""
        if self.matrix is not None:
            return int(self.matrix[a, b])
        self.compact()
        code = min(a, b) * self.experts + max(a, b)
        at = int(np.searchsorted(self.codes, code))
        return int(self.counts[at]) if at < self.codes.size and self.codes[at] == code else 0

    def dense(self) -> np.ndarray:
        """The symmetric ``[experts, experts]`` matrix with a zero diagonal (small layers only)."""
        if self.matrix is not None:
            matrix = self.matrix.copy()
            np.fill_diagonal(matrix, 0)
            return matrix
        self.compact()
        matrix = np.zeros((self.experts, self.experts), dtype=np.int64)
        a, b = np.divmod(self.codes, self.experts)
        matrix[a, b] = self.counts
        matrix[b, a] = self.counts
        return matrix

    def copy(self) -> PairCounts:
        self.compact()
        return PairCounts(
            self.experts,
            None if self.matrix is None else self.matrix.copy(),
            self.codes.copy(),
            self.counts.copy(),
        )


@dataclass(slots=True)
class LayerAggregate:
    """Per MoE layer over the whole run: expert load of top-k picks and entropy means."""

    layer_index: int
    num_total_experts: int
    num_active_experts: int
    tokens: int = 0
    entropy_tokens: int = 0  # tokens with an entropy (a v0.2 run without scores has none)
    entropy_sum: float = 0.0
    normalized_entropy_sum: float = 0.0
    load: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    top1_load: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pairs: PairCounts = field(default_factory=lambda: PairCounts(0))
    #: per-token parts in arrival order: (event positions, top-k indices, normalized entropy)
    token_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    #: pairs not counted during the pass (the v0.2 pass): counted from token_parts when first asked
    pairs_from_parts: bool = False
    #: the pass kept no per-token parts (``RunAggregates.series`` False): what needs them refuses
    without_series: bool = False

    def pair_counts(self) -> PairCounts:
        """Co-activation counts of this layer (counted now from the kept picks if the pass did not)."""
        if self.pairs_from_parts:
            self._need_series()
            pairs = PairCounts(self.num_total_experts)
            for _positions, picks, _entropy in self.token_parts:
                pairs.add_picks(picks)
            self.pairs, self.pairs_from_parts = pairs, False
        return self.pairs

    @property
    def mean_entropy(self) -> float | None:
        return self.entropy_sum / self.entropy_tokens if self.entropy_tokens else None

    @property
    def mean_normalized_entropy(self) -> float | None:
        return self.normalized_entropy_sum / self.entropy_tokens if self.entropy_tokens else None

    def never_selected(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.load == 0)]

    def ranked_experts(self) -> list[int]:
        """Experts by descending load, ties to the lower index."""
        return [int(i) for i in np.lexsort((np.arange(self.load.size), -self.load))]

    def token_series(self, events: int) -> tuple[np.ndarray, np.ndarray]:
        """(top-k indices [events, k] with -1, normalized entropy [events] with NaN) by position.

        Positions without a usable entry for this layer (unreadable or flagged) stay -1 / NaN.
        """
        self._need_series()
        topk = np.full((events, self.num_active_experts), -1, dtype=_index_dtype(self.num_total_experts))
        entropy = np.full(events, np.nan, dtype=np.float32)
        for positions, picks, values in self.token_parts:
            inside = positions < events
            if picks.shape[1] == self.num_active_experts:
                topk[positions[inside]] = picks[inside]
            entropy[positions[inside]] = values[inside]
        return topk, entropy

    def _need_series(self) -> None:
        if self.without_series:
            raise RuntimeError(f"layer {self.layer_index}: this check kept no per-token series")

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
    #: keep each layer's per-token parts (the app's run view and drill, v0.2's co-activation
    #: counts); False for a check whose aggregates only count: its memory is then flat in the
    #: run's length (a 500,000-token v0.2 check held 178 MB of them, and peaked at 480 MB)
    series: bool = True

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
        known = np.isfinite(entropy)  # NaN: no entropy for this row (no scores recorded)
        if known.all():
            entropy_tokens = tokens
            entropy_sums = np.bincount(inverse, weights=entropy, minlength=count)
            normalized_sums = np.bincount(inverse, weights=normalized_entropy, minlength=count)
        else:
            entropy_tokens = np.bincount(inverse[known], minlength=count)
            entropy_sums = np.bincount(inverse[known], weights=entropy[known], minlength=count)
            normalized_sums = np.bincount(inverse[known], weights=normalized_entropy[known], minlength=count)
        if topk.shape[1]:
            load = np.bincount((inverse[:, None] * n + topk).ravel(), minlength=count * n).reshape(count, n)
            top1 = np.bincount(inverse * n + topk[:, 0], minlength=count * n).reshape(count, n)
            if n <= DENSE_MAX:  # one bincount for every layer's pairs (a, b) and (b, a)
                codes = (inverse[:, None, None] * n * n + topk[:, :, None] * n + topk[:, None, :]).ravel()
                coact = np.bincount(codes, minlength=count * n * n).reshape(count, n, n)
        for u, layer_index in enumerate(layers.tolist()):
            agg = self.layers.get(layer_index)
            if agg is None:
                agg = LayerAggregate(
                    layer_index,
                    n,
                    k,
                    load=np.zeros(n, dtype=np.int64),
                    top1_load=np.zeros(n, dtype=np.int64),
                    pairs=PairCounts(n),
                    without_series=not self.series,
                )
                self.layers[layer_index] = agg
            if agg.num_total_experts != n:
                continue
            agg.tokens += int(tokens[u])
            agg.entropy_tokens += int(entropy_tokens[u])
            agg.entropy_sum += float(entropy_sums[u])
            agg.normalized_entropy_sum += float(normalized_sums[u])
            if topk.shape[1]:
                agg.load += load[u]
                agg.top1_load += top1[u]
                if n <= DENSE_MAX:
                    agg.pairs.add_matrix(coact[u])
                else:
                    agg.pairs.add_picks(topk[inverse == u])
            if positions is not None and self.series:
                mine = inverse == u
                agg.token_parts.append(
                    (
                        positions[mine].astype(np.int64),
                        topk[mine].astype(_index_dtype(n)),
                        normalized_entropy[mine].astype(np.float32),
                    )
                )

    def add_block(self, part: BlockPart) -> None:
        """Fold in one v0.2 block's partial aggregates (made by ``BlockPart.of`` in a worker).

        Co-activation pairs are left to ``LayerAggregate.pair_counts()``.
        """
        n, k = part.experts, part.picks.shape[2]
        for slot, layer_index in enumerate(part.layers):
            agg = self.layers.get(layer_index)
            if agg is None:
                agg = LayerAggregate(
                    layer_index,
                    n,
                    k,
                    load=np.zeros(n, dtype=np.int64),
                    top1_load=np.zeros(n, dtype=np.int64),
                    pairs=PairCounts(0),
                    pairs_from_parts=True,
                    without_series=not self.series,
                )
                self.layers[layer_index] = agg
            if agg.num_total_experts != n:
                continue
            agg.tokens += int(part.tokens[slot])
            agg.load += part.load[slot]
            agg.top1_load += part.top1[slot]
            agg.entropy_tokens += int(part.entropy_tokens[slot])
            agg.entropy_sum += float(part.entropy_sums[slot])
            agg.normalized_entropy_sum += float(part.normalized_sums[slot])
            if not self.series:
                continue
            positions, picks, normalized = part.positions, part.picks[:, slot, :], part.normalized[:, slot]
            if part.usable is not None and not part.usable[:, slot].all():
                keep = part.usable[:, slot]
                positions, picks, normalized = positions[keep], picks[keep], normalized[keep]
            agg.token_parts.append((positions, picks, normalized))

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
            if not self.series:  # a later part's series are not kept either
                theirs.token_parts, theirs.without_series = [], True
            if mine is None:
                self.layers[index] = theirs
            elif mine.num_total_experts == theirs.num_total_experts:
                mine.tokens += theirs.tokens
                mine.entropy_tokens += theirs.entropy_tokens
                mine.entropy_sum += theirs.entropy_sum
                mine.normalized_entropy_sum += theirs.normalized_entropy_sum
                mine.load += theirs.load
                mine.top1_load += theirs.top1_load
                if mine.pairs_from_parts or theirs.pairs_from_parts:
                    mine.pairs_from_parts = True  # counted from all kept picks when asked
                else:
                    mine.pairs.absorb(theirs.pairs)
                mine.token_parts.extend(theirs.token_parts)
                mine.without_series = mine.without_series or theirs.without_series

    @property
    def duration_mean(self) -> float | None:
        return self.duration_sum / self.duration_count if self.duration_count else None


def _index_dtype(experts: int) -> type[np.signedinteger]:
    """The smallest signed integer type that holds every expert index (and -1 for "none")."""
    return (
        np.int16
        if experts <= np.iinfo(np.int16).max
        else np.int32
        if experts <= np.iinfo(np.int32).max
        else np.int64
    )


@dataclass(slots=True)
class BlockPart:
    """One v0.2 block's contribution to the run aggregates, computed beside the checks."""

    layers: tuple[int, ...]
    experts: int
    tokens: np.ndarray  # [lg] usable rows per layer
    load: np.ndarray  # [lg, E]
    top1: np.ndarray  # [lg, E]
    entropy_tokens: np.ndarray  # [lg]
    entropy_sums: np.ndarray  # [lg]
    normalized_sums: np.ndarray  # [lg]
    positions: np.ndarray  # [t]
    picks: np.ndarray  # [t, lg, k] (the smallest integer type that holds the experts)
    normalized: np.ndarray  # [t, lg] float32, NaN without scores
    usable: np.ndarray | None  # [t, lg], None: every row

    @staticmethod
    def of(
        layers: tuple[int, ...],
        experts: int,
        selected: np.ndarray,
        entropy: np.ndarray | None,
        first: int,
        usable: np.ndarray | None,
    ) -> BlockPart:
        """``selected`` ``[t, lg, k]`` (valid where ``usable``), ``entropy`` ``[t, lg]`` or None."""
        t, lg, _k = selected.shape
        picks = selected.astype(_index_dtype(experts), copy=False)
        slots = np.arange(lg, dtype=np.int64)[None, :, None] * experts
        keep = np.ones((t, lg), dtype=bool) if usable is None else usable
        codes = (slots + picks)[keep]
        load = np.bincount(codes.ravel(), minlength=lg * experts).reshape(lg, experts)
        top1 = np.bincount(codes[:, 0], minlength=lg * experts).reshape(lg, experts)
        tokens = keep.sum(axis=0)
        if entropy is None:
            normalized = np.full((t, lg), np.nan, dtype=np.float32)
            zeros = np.zeros(lg)
            entropy_tokens, entropy_sums, normalized_sums = np.zeros(lg, dtype=np.int64), zeros, zeros
        else:
            log_n = float(np.log(experts)) if experts > 1 else 0.0
            normalized = (entropy / log_n if log_n else np.zeros_like(entropy)).astype(np.float32)
            masked = np.where(keep, entropy, 0.0)
            entropy_tokens = tokens
            entropy_sums = masked.sum(axis=0)
            normalized_sums = np.where(keep, normalized, 0.0).sum(axis=0, dtype=np.float64)
        return BlockPart(
            layers,
            experts,
            tokens,
            load,
            top1,
            entropy_tokens,
            entropy_sums,
            normalized_sums,
            np.arange(first, first + t, dtype=np.int64),
            picks,
            normalized,
            usable,
        )
