"""Token-aligned comparison of two runs of the same prompt (two checkpoints, dtypes, engines).

Per token and MoE layer: Jaccard overlap of the top-k sets, Jensen-Shannon divergence of the
router distributions (bits, base 2, so in [0, 1]) and whether the top-1 expert agrees. Runs are
aligned by event position; different lengths, layer sets or expert counts are reported, never
guessed around. Symmetric in its two runs, and zero divergence on identical runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import msgspec
import numpy as np

from .bundle.blocks import RoutingBlock, aligned, routing_blocks
from .bundle.reader import EventReadError, RunReader
from .events import LayerEvent
from .jsonfmt import DECODE_FAILURES


class _Layer(msgspec.Struct, gc=False):
    """The fields a comparison reads; the rest of the event is skipped, not parsed."""

    layer_index: int
    router_probs: list[float]
    topk_indices: list[int]


class _Event(msgspec.Struct, gc=False):
    token_id: int | None = None
    layers: list[_Layer] = []


_DECODER = msgspec.json.Decoder(_Event)


@dataclass(slots=True)
class RunComparison:
    run_a: str
    run_b: str
    tokens_a: int
    tokens_b: int
    layers: list[int]
    jaccard: np.ndarray  # [T, L], NaN where not comparable
    jsd: np.ndarray
    top1_agree: np.ndarray
    token_id_differs: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: [T, L]: 1 where both top-k *sets* are identical, 0 where they differ, NaN not comparable
    same_set: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    #: [T, L]: given the same set, 1 where the order is the same too (NaN where the sets differ)
    same_order: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    #: [T, L]: where the sets differ and a run has scores, how far the closest expert the other
    #: run chose was from being chosen here: this run's lowest selected key minus that expert's
    #: key, in selection keys (scores, plus the bias where the router adds one); NaN elsewhere
    flip_margin: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    #: [T, L]: the same run's gap at its top-k boundary (k-th minus (k+1)-th key) on every scored
    #: token: the control that says whether flips happen at near-ties
    boundary_gap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    gap_medians: dict[int, float | None] = field(default_factory=dict, repr=False, compare=False)

    def usual_gap(self, column: int) -> float | None:
        """The median boundary gap of one layer column (cached: the app asks at every step)."""
        cache = self.gap_medians
        if column not in cache:
            gaps = self.boundary_gap[:, column] if self.boundary_gap.size else np.zeros(0)
            gaps = gaps[~np.isnan(gaps)]
            cache[column] = float(np.median(gaps)) if gaps.size else None
        return cache[column]

    @property
    def aligned(self) -> int:
        return int(self.jaccard.shape[0])

    def token_agreement(self) -> np.ndarray:
        """Mean top-k Jaccard per token (over comparable layers): the sparkline's data."""
        if not self.jaccard.size:
            return np.zeros(self.jaccard.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a token with no comparable layer is NaN
            means: np.ndarray = np.nanmean(self.jaccard, axis=1)
            return means

    def worst_tokens(self, count: int = 5) -> list[tuple[int, float]]:
        agreement = self.token_agreement()
        order = [int(i) for i in np.argsort(np.nan_to_num(agreement, nan=2.0), kind="stable")]
        return [(i, float(agreement[i])) for i in order[:count] if not np.isnan(agreement[i])]

    def layer_summary(self) -> list[dict[str, Any]]:
        rows = []
        for column, layer in enumerate(self.layers):
            j, d, a = self.jaccard[:, column], self.jsd[:, column], self.top1_agree[:, column]
            ok = ~np.isnan(j)
            same = self.same_set[:, column] if self.same_set.size else np.full(j.shape, np.nan)
            order = self.same_order[:, column] if self.same_order.size else np.full(j.shape, np.nan)
            ordered = ~np.isnan(order)
            margin = self.flip_margin[:, column] if self.flip_margin.size else np.full(j.shape, np.nan)
            gap = self.boundary_gap[:, column] if self.boundary_gap.size else np.full(j.shape, np.nan)
            flips, gaps = margin[~np.isnan(margin)], gap[~np.isnan(gap)]
            scored = ok & ~np.isnan(d)  # runs without scores (an engine's top-k) have no JSD
            rows.append(
                {
                    "layer_index": layer,
                    "compared_tokens": int(ok.sum()),
                    "mean_topk_jaccard": float(j[ok].mean()) if ok.any() else None,
                    "mean_jsd_bits": float(d[scored].mean()) if scored.any() else None,
                    "max_jsd_bits": float(d[scored].max()) if scored.any() else None,
                    "top1_agreement": float(np.nanmean(a[ok]))
                    if ok.any() and (~np.isnan(a[ok])).any()
                    else None,
                    "identical_topk_set": float(np.nanmean(same[ok])) if ok.any() else None,
                    "same_order_given_set": float(order[ordered].mean()) if ordered.any() else None,
                    "flips_with_margin": int(flips.size),
                    "median_flip_margin": float(np.median(flips)) if flips.size else None,
                    "median_boundary_gap": float(np.median(gaps)) if gaps.size else None,
                    "flips_below_boundary_gap_p10": (
                        float((flips < np.quantile(gaps, 0.1)).mean()) if flips.size and gaps.size else None
                    ),
                }
            )
        return rows

    def to_dict(self, worst: int = 5) -> dict[str, Any]:
        overall = self.jaccard[~np.isnan(self.jaccard)]
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "tokens_a": self.tokens_a,
            "tokens_b": self.tokens_b,
            "aligned_tokens": self.aligned,
            "layers": self.layers,
            "token_ids_differ_at": self.token_id_differs,
            "mean_topk_jaccard": float(overall.mean()) if overall.size else None,
            "mean_jsd_bits": float(np.nanmean(self.jsd)) if (~np.isnan(self.jsd)).any() else None,
            "top1_agreement": float(np.nanmean(self.top1_agree)) if overall.size else None,
            "identical_topk_set": float(np.nanmean(self.same_set)) if overall.size else None,
            "same_order_given_set": (
                float(np.nanmean(self.same_order)) if (~np.isnan(self.same_order)).any() else None
            ),
            "per_layer": self.layer_summary(),
            "worst_tokens": [{"token": t, "mean_topk_jaccard": v} for t, v in self.worst_tokens(worst)],
            "token_agreement": [None if np.isnan(v) else float(v) for v in self.token_agreement()],
            "notes": self.notes,
        }


def jensen_shannon_bits(p: np.ndarray, q: np.ndarray) -> float:
    """JSD(p, q) in bits; symmetric, 0 for equal distributions, at most 1."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def jensen_shannon_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JSD in bits of each row pair of two [rows, n] arrays (the same as jensen_shannon_bits)."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=1)
        kq = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=1)
    result: np.ndarray = np.maximum(0.0, (kp + kq) / 2)
    return result


def _layers_of(event: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    layers = event.get("layers")
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and isinstance(layer.get("layer_index"), int):
            out[layer["layer_index"]] = layer
    return out


#: (scores or probabilities, selected experts, selection keys or None)
_Pair: TypeAlias = tuple[Any, list[Any] | None, Any]


def _read(reader: RunReader, t: int) -> tuple[Any, dict[int, _Pair]]:
    """(token_id, {layer: (router_probs, topk_indices)}) of event ``t``, decoding only those fields.

    Lines the typed decode refuses go through the reader's strict parser, so an unreadable event
    is reported (EventReadError) exactly as elsewhere and an odd one is compared as far as it can.
    """
    if reader.profile == "v0.2":
        token = reader.token_event(t)
        if not token.readable:
            raise EventReadError(token.problem or f"event {t} cannot be read")
        return token.token_id, {
            layer.layer_index: (_distribution(layer), list(layer.selected), layer.selection_keys())
            for layer in token.layers
            if layer.layer_index is not None
        }
    try:
        event = _DECODER.decode(reader.raw_line(t))
        return event.token_id, {
            la.layer_index: (la.router_probs, la.topk_indices, la.router_probs) for la in event.layers
        }
    except DECODE_FAILURES:
        loose = reader.event(t)  # raises EventReadError when the line is not JSON at all
        layers = {}
        for index, layer in _layers_of(loose).items():
            probs = _as_list(layer.get("router_probs"))
            layers[index] = (probs, _as_list(layer.get("topk_indices")), probs)
        return loose.get("token_id"), layers


#: a v0.2 layer recorded without scores (top-k only): its selection is compared, nothing else
NO_SCORES = "no scores recorded"


def _distribution(layer: LayerEvent) -> Any:
    """A v0.2 layer's scores as a distribution (by the score function's definition); NO_SCORES
    for a top-k-only layer; None for scores that cannot be one (not comparable)."""
    if layer.scores is None:
        return NO_SCORES
    return layer.distribution()


def _as_list(value: Any) -> list[Any] | None:
    """A field that should be a list, or None (an int, an object): the layer is not compared."""
    return value if isinstance(value, list) else None


def _first_layers(reader: RunReader, count: int, tries: int = 64) -> dict[int, dict[str, Any]]:
    """The layers of the first readable event (an unreadable event 0 does not stop a compare)."""
    for t in range(min(count, tries)):
        if reader.profile == "v0.2":
            token = reader.token_event(t)
            if token.readable:
                return {la.layer_index: {} for la in token.layers if la.layer_index is not None}
            continue
        try:
            return _layers_of(reader.event(t))
        except EventReadError:
            continue
        except IndexError:  # past the last event
            return {}
    return {}


class _Arrays:
    """The per token and layer results of a stretch of tokens (NaN: not compared)."""

    NAMES = ("jaccard", "jsd", "agree", "same_set", "same_order", "flip_margin", "boundary_gap")

    def __init__(self, rows: int, columns: int) -> None:
        for name in self.NAMES:
            setattr(self, name, np.full((rows, columns), np.nan))

    jaccard: np.ndarray
    jsd: np.ndarray
    agree: np.ndarray
    same_set: np.ndarray
    same_order: np.ndarray
    flip_margin: np.ndarray
    boundary_gap: np.ndarray

    @classmethod
    def joined(cls, parts: list[_Arrays], columns: int) -> _Arrays:
        out = cls(0, columns)
        if parts:
            for name in cls.NAMES:
                setattr(out, name, np.concatenate([getattr(part, name) for part in parts]))
        return out


@dataclass(slots=True)
class _Found:
    """What a comparison notices beyond the numbers, gathered in token order."""

    differs: list[int] = field(default_factory=list)
    mismatched: set[int] = field(default_factory=set)
    unreadable: list[tuple[int, str]] = field(default_factory=list)


def _compare_token(
    arr: _Arrays, r: int, t: int, pairs: tuple[Any, Any], layers: list[int], found: _Found
) -> None:
    """Row ``r`` of ``arr`` from token ``t`` of both runs, read event by event (any shape)."""
    (id_a, la), (id_b, lb) = pairs
    if id_a != id_b:
        found.differs.append(t)

    def sets(column: int, x: list[Any], y: list[Any]) -> None:
        """Set agreement, and order agreement where the sets agree (a reordered top-k is not a
        changed top-k)."""
        xs = [i for i in x if isinstance(i, int) and not isinstance(i, bool)]
        ys = [i for i in y if isinstance(i, int) and not isinstance(i, bool)]
        equal = set(xs) == set(ys)
        arr.same_set[r, column] = float(equal)
        if equal:
            arr.same_order[r, column] = float(xs == ys)

    def margins(column: int, x: _Pair, y: _Pair) -> None:
        """The flip margin and the boundary gap in run A's keys where it has them, else run B's."""
        own, other = (x, y) if x[2] is not None else (y, x)
        if own[2] is None or own[1] is None or other[1] is None:
            return
        gap, margin = _margin(own[2], own[1], other[1])
        arr.boundary_gap[r, column] = gap
        if margin is not None:
            arr.flip_margin[r, column] = margin

    columns, xs, ys = [], [], []
    for column, layer in enumerate(layers):
        x, y = la.get(layer), lb.get(layer)
        if x is None or y is None:
            continue
        if x[0] is NO_SCORES or y[0] is NO_SCORES:  # v0.2 top-k only: the selections alone
            if x[1] is not None and y[1] is not None:
                sx, sy = set(x[1]), set(y[1])
                arr.jaccard[r, column] = len(sx & sy) / len(sx | sy) if sx | sy else 1.0
                sets(column, x[1], y[1])
                margins(column, x, y)
                if x[1] and y[1]:  # top-1: the first expert each recorded (no scores to rank)
                    arr.agree[r, column] = float(x[1][0] == y[1][0])
            continue
        try:
            px, py = np.asarray(x[0], dtype=np.float64), np.asarray(y[0], dtype=np.float64)
        except (TypeError, ValueError):
            found.mismatched.add(layer)
            continue
        if px.shape != py.shape or px.ndim != 1 or px.size == 0 or x[1] is None or y[1] is None:
            found.mismatched.add(layer)
            continue
        sx, sy = {i for i in x[1] if isinstance(i, int)}, {i for i in y[1] if isinstance(i, int)}
        arr.jaccard[r, column] = len(sx & sy) / len(sx | sy) if sx | sy else 1.0
        sets(column, x[1], y[1])
        margins(column, x, y)
        columns.append(column)
        xs.append(px)
        ys.append(py)
    if columns and len({p.size for p in xs}) == 1:  # every layer at once
        px, py = np.stack(xs), np.stack(ys)
        arr.jsd[r, columns] = jensen_shannon_rows(px, py)
        arr.agree[r, columns] = (np.argmax(px, axis=1) == np.argmax(py, axis=1)).astype(np.float64)
    else:
        for column, px, py in zip(columns, xs, ys, strict=True):
            arr.jsd[r, column] = jensen_shannon_bits(px, py)
            arr.agree[r, column] = float(int(np.argmax(px)) == int(np.argmax(py)))


def _token_by_token(
    a: RunReader, b: RunReader, t: int, arr: _Arrays, r: int, layers: list[int], found: _Found
) -> None:
    try:
        pairs = (_read(a, t), _read(b, t))
    except EventReadError as exc:
        found.unreadable.append((t, str(exc)))
        return
    _compare_token(arr, r, t, pairs, layers, found)


def compare_runs(run_a: Path | str | RunReader, run_b: Path | str | RunReader) -> RunComparison:
    """Compare two bundles event by event (BundleOpenError if either cannot be opened).

    Readers already open (with their offset index built) are used as they are, so a caller that
    has both runs open does not scan either file again. Two v0.1.0 runs are read a block of
    events at a time by worker processes and compared a block at a time (the same numbers).
    """
    a = run_a if isinstance(run_a, RunReader) else RunReader(run_a)
    b = run_b if isinstance(run_b, RunReader) else RunReader(run_b)
    by_blocks = all(r.profile == "v0.1" and r.raw_problem is None and not r.index_ready for r in (a, b))
    unknown = 1 << 62  # read by blocks: the lengths are known at the end (event 0 first)
    first_a = _first_layers(a, unknown if by_blocks else len(a))
    first_b = _first_layers(b, unknown if by_blocks else len(b))
    layers = sorted(set(first_a) | set(first_b))
    found = _Found()
    if by_blocks:
        arr, na, nb = _compare_blocks(a, b, layers, found)
    else:
        na, nb = len(a), len(b)
        arr = _Arrays(min(na, nb), len(layers))
        for t in range(min(na, nb)):
            _token_by_token(a, b, t, arr, t, layers, found)
    count = min(na, nb)
    notes = []
    if na != nb:
        notes.append(f"different lengths: {na} vs {nb} tokens; the first {count} are compared")
    only_a, only_b = sorted(set(first_a) - set(first_b)), sorted(set(first_b) - set(first_a))
    if only_a or only_b:
        notes.append(f"layers only in A: {only_a}; only in B: {only_b}")
    if found.unreadable:
        first, reason = min(found.unreadable)
        notes.append(
            f"{len(found.unreadable)} token(s) not compared (an event cannot be read), "
            f"first token {first}: {reason}"
        )
    if found.mismatched:
        notes.append(
            "layers with different expert counts or ill-typed values (not compared): "
            f"{sorted(found.mismatched)}"
        )
    differs = sorted(found.differs)
    if differs:
        notes.append(
            f"generated token ids differ at {len(differs)} position(s), first at token {differs[0]}; "
            "routing after a divergence compares different contexts"
        )
    return RunComparison(
        str(a.run_dir),
        str(b.run_dir),
        na,
        nb,
        layers,
        arr.jaccard,
        arr.jsd,
        arr.agree,
        differs,
        notes,
        same_set=arr.same_set,
        same_order=arr.same_order,
        flip_margin=arr.flip_margin,
        boundary_gap=arr.boundary_gap,
    )


def _compare_blocks(a: RunReader, b: RunReader, layers: list[int], found: _Found) -> tuple[_Arrays, int, int]:
    """Two v0.1.0 runs, a block of events at a time: the events of the blocks' common shape
    vectorised, every other event read and compared on its own exactly as token by token."""
    lengths = [0, 0]
    parts = []
    for wa, wb in aligned(routing_blocks(a.raw_path), routing_blocks(b.raw_path), lengths):
        arr = _Arrays(wa.count, len(layers))
        done = _vectorised(wa, wb, arr, layers, found)
        for r in np.flatnonzero(~done):
            _token_by_token(a, b, wa.start + int(r), arr, int(r), layers, found)
        parts.append(arr)
    return _Arrays.joined(parts, len(layers)), lengths[0], lengths[1]


def _vectorised(
    wa: RoutingBlock, wb: RoutingBlock, arr: _Arrays, layers: list[int], found: _Found
) -> np.ndarray:
    """Fill the rows both windows hold in their common shape; returns which rows were filled."""
    done = wa.regular & wb.regular
    common = [layer for layer in wa.layers if layer in wb.layers]
    same_shape = wa.probs.shape[2] == wb.probs.shape[2] and wa.topk.shape[2] == wb.topk.shape[2]
    if not done.any() or not common or not same_shape:
        return np.zeros(wa.count, dtype=bool)
    rows = np.flatnonzero(done)
    ia = [wa.layers.index(layer) for layer in common]
    ib = [wb.layers.index(layer) for layer in common]
    cols = np.array([layers.index(layer) for layer in common])
    px, py = wa.probs[rows][:, ia], wb.probs[rows][:, ib]
    tx, ty = wa.topk[rows][:, ia], wb.topk[rows][:, ib]
    experts, k = px.shape[-1], tx.shape[-1]
    for r in rows:
        if wa.token_ids[r] != wb.token_ids[r]:
            found.differs.append(wa.start + int(r))
    mx, my = np.zeros(px.shape, dtype=bool), np.zeros(py.shape, dtype=bool)
    np.put_along_axis(mx, tx, True, axis=-1)
    np.put_along_axis(my, ty, True, axis=-1)
    inter, union = (mx & my).sum(axis=-1), (mx | my).sum(axis=-1)
    same = (mx == my).all(axis=-1)
    where = np.ix_(rows, cols)
    arr.jaccard[where] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    arr.same_set[where] = same.astype(np.float64)
    arr.same_order[where] = np.where(same, (tx == ty).all(axis=-1).astype(np.float64), np.nan)
    arr.jsd[where] = jensen_shannon_rows(px.reshape(-1, experts), py.reshape(-1, experts)).reshape(same.shape)
    arr.agree[where] = (np.argmax(px, axis=-1) == np.argmax(py, axis=-1)).astype(np.float64)
    ranked = np.sort(px, axis=-1)[..., ::-1]  # run A's keys (its probabilities), as token by token
    arr.boundary_gap[where] = ranked[..., k - 1] - ranked[..., k] if k < experts else np.nan
    missing = my & ~mx
    own_min = np.where(mx, px, np.inf).min(axis=-1)
    other_max = np.where(missing, px, -np.inf).max(axis=-1)
    arr.flip_margin[where] = np.where(missing.any(axis=-1), own_min - other_max, np.nan)
    filled: np.ndarray = done
    return filled


def _margin(keys: Any, own: list[Any], other: list[Any]) -> tuple[float, float | None]:
    """(boundary gap, flip margin or None) of one token and layer; NaN gap where the keys or the
    ids cannot be used (ids out of range, not integers, non-finite keys)."""
    try:
        values = np.asarray(keys, dtype=np.float64)
    except (TypeError, ValueError):
        return float("nan"), None
    ids = [i for i in own if isinstance(i, int) and not isinstance(i, bool)]
    chosen = [i for i in other if isinstance(i, int) and not isinstance(i, bool)]
    size = values.size
    if values.ndim != 1 or not ids or not all(0 <= i < size for i in ids + chosen):
        return float("nan"), None
    if not np.isfinite(values).all():
        return float("nan"), None
    k = len(set(ids))
    ranked = np.sort(values)[::-1]
    gap = float(ranked[k - 1] - ranked[k]) if k < size else float("nan")
    missing = set(chosen) - set(ids)
    if not missing:
        return gap, None
    return gap, float(values[ids].min() - max(values[i] for i in missing))
