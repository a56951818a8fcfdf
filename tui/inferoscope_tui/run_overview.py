"""Run-level numbers for the overview screen, taken from the validation pass's aggregates.

Nothing here reads the bundle again: the streaming pass already folded every usable layer entry
into loads, co-activation counts and per-token series, so opening the overview of a 50,000-token
run costs array arithmetic only. Every number keeps the token positions behind it (``tokens_*``),
so each can be drilled into.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inferoscope import ValidationReport
from inferoscope.validation import PairCounts


@dataclass(slots=True)
class LayerOverview:
    """One MoE layer over the whole run."""

    layer_index: int
    experts: int
    k: int
    tokens: int  # usable entries (unreadable or flagged entries are left out)
    load: np.ndarray  # top-k picks per expert
    pairs: PairCounts  # tokens that picked both experts, for the pairs that occur
    topk: np.ndarray  # [events, k], -1 where the entry is not usable
    entropy: np.ndarray  # [events] normalized entropy, NaN where not usable
    _bins: dict[int, tuple[np.ndarray, list[tuple[int, int]]]] = field(default_factory=dict)

    def load_ratio(self) -> np.ndarray:
        """Each expert's share of the picks as a multiple of the uniform share (1.0 = uniform)."""
        picks = self.tokens * self.k
        return self.load * self.experts / picks if picks else np.zeros(self.experts)

    def entropy_bins(self, bins: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Mean normalized entropy in ``bins`` consecutive token ranges; the ranges with it."""
        cached = self._bins.get(bins)
        if cached is not None:
            return cached
        count = self.entropy.size
        used = max(1, min(bins, count)) if count else 0
        edges = np.linspace(0, count, used + 1).astype(np.int64) if used else np.zeros(1, dtype=np.int64)
        column = np.searchsorted(edges, np.arange(count), side="right") - 1
        valid = ~np.isnan(self.entropy)
        sums = np.bincount(column[valid], weights=self.entropy[valid].astype(np.float64), minlength=used)
        counts = np.bincount(column[valid], minlength=used)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        spans = [(int(edges[b]), int(edges[b + 1])) for b in range(used)]
        self._bins[bins] = (means, spans)
        return means, spans

    def top_pairs(self, count: int) -> list[tuple[int, int, int, float]]:
        """The most frequent expert pairs (a < b): (a, b, tokens, lift over independence)."""
        pairs = []
        for a, b, together in self.pairs.top(count):
            expected = self.load[a] * self.load[b] / self.tokens if self.tokens else 0.0
            pairs.append((a, b, together, together / expected if expected else float("inf")))
        return pairs

    def top1(self) -> np.ndarray:
        return self.topk[:, 0] if self.topk.shape[1] else np.full(self.topk.shape[0], -1, np.int16)

    # -- the tokens behind each number -------------------------------------------------------
    def tokens_with_expert(self, expert: int) -> np.ndarray:
        return np.flatnonzero((self.topk == expert).any(axis=1))

    def tokens_with_pair(self, a: int, b: int) -> np.ndarray:
        return np.flatnonzero((self.topk == a).any(axis=1) & (self.topk == b).any(axis=1))

    def rank_of(self, position: int, expert: int) -> int | None:
        hits = np.flatnonzero(self.topk[position] == expert)
        return int(hits[0]) if hits.size else None


def overview_of(report: ValidationReport) -> dict[int, LayerOverview]:
    """Per layer index, the run-level numbers of a finished validation pass."""
    aggregates = report.aggregates
    out = {}
    for index in sorted(aggregates.layers):
        agg = aggregates.layers[index]
        topk, entropy = agg.token_series(aggregates.events)
        out[index] = LayerOverview(
            index,
            agg.num_total_experts,
            agg.num_active_experts,
            agg.tokens,
            agg.load.copy(),
            agg.pair_counts().copy(),
            topk,
            entropy,
        )
    return out


SPARK = "▁▂▃▄▅▆▇█"


def spark_scale(series: list[np.ndarray]) -> tuple[float, float]:
    """One (low, high) for several sparklines, so their heights compare; (0, 1) when empty."""
    values = np.concatenate([s[~np.isnan(s)] for s in series]) if series else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (max(0.0, low - 0.5), low + 0.5)


def spark_glyph(value: float, low: float = 0.0, high: float = 1.0) -> str:
    """``value`` on an eight-step scale from ``low`` to ``high`` (blank when missing)."""
    if np.isnan(value):
        return " "
    share = (value - low) / (high - low) if high > low else 0.5
    return SPARK[max(0, min(len(SPARK) - 1, int(share * len(SPARK))))]
