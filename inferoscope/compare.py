"""Token-aligned comparison of two runs of the same prompt (two checkpoints, dtypes, engines).

Per token and MoE layer: Jaccard overlap of the top-k sets, Jensen-Shannon divergence of the
router distributions (bits, base 2, so in [0, 1]) and whether the top-1 expert agrees. Runs are
aligned by event position; different lengths, layer sets or expert counts are reported, never
guessed around. Symmetric in its two runs, and zero divergence on identical runs.
"""

from __future__ import annotations

import itertools
import mmap
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import msgspec
import numpy as np

from .bundle.blocks import ROUTING_DECODER, RoutingBlock, aligned, routing_blocks
from .bundle.lines import line_chunks
from .bundle.pipe import can_fork_beside
from .bundle.reader import BundleOpenError, EventReadError, RunReader
from .events import LayerEvent
from .forked_call import ForkedCall
from .jsonfmt import DECODE_FAILURES


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
    #: what views derive once and reuse at every step (keyed by what they derive)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    #: gives the arrays' pages back to the file behind them, where there is one (a long v0.2
    #: pair): the summaries read one array at a time and give it back, so memory stays flat
    release: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def usual_gap(self, column: int) -> float | None:
        """The median boundary gap of one layer column (cached: the app asks at every step)."""
        cache = self.gap_medians
        if column not in cache:
            gaps = self.boundary_gap[:, column] if self.boundary_gap.size else np.zeros(0)
            gaps = gaps[~np.isnan(gaps)]
            self.release()
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
        self.release()
        return means

    def worst_tokens(self, count: int = 5, agreement: np.ndarray | None = None) -> list[tuple[int, float]]:
        agreement = self.token_agreement() if agreement is None else agreement
        order = [int(i) for i in np.argsort(np.nan_to_num(agreement, nan=2.0), kind="stable")]
        return [(i, float(agreement[i])) for i in order[:count] if not np.isnan(agreement[i])]

    def _columns(self, array: np.ndarray) -> np.ndarray:
        """``array`` as one contiguous row per layer column (the same numbers), given back."""
        if not array.size:
            return np.full((len(self.layers), self.jaccard.shape[0]), np.nan)
        columns = np.empty(array.shape[::-1])
        for start in range(0, array.shape[0], 1 << 16):  # a slice of the file mapped at a time
            columns[:, start : start + (1 << 16)] = array[start : start + (1 << 16)].T
            self.release()
        return columns

    def layer_summary(self) -> list[dict[str, Any]]:
        """Per layer: the numbers of ``to_dict``'s per_layer rows. One array is read at a time."""
        count = len(self.layers)
        jac = self._columns(self.jaccard)
        ok = ~np.isnan(jac)
        compared = [int(ok[c].sum()) for c in range(count)]
        jaccard = [float(jac[c][ok[c]].mean()) if ok[c].any() else None for c in range(count)]
        del jac
        div = self._columns(self.jsd)
        scored = ok & ~np.isnan(div)  # runs without scores (an engine's top-k) have no JSD
        mean_jsd = [float(div[c][scored[c]].mean()) if scored[c].any() else None for c in range(count)]
        max_jsd = [float(div[c][scored[c]].max()) if scored[c].any() else None for c in range(count)]
        del div, scored
        agree = self._columns(self.top1_agree)
        top1 = []
        for c in range(count):
            a = agree[c][ok[c]]
            top1.append(float(np.nanmean(a)) if ok[c].any() and (~np.isnan(a)).any() else None)
        del agree
        same = self._columns(self.same_set)
        identical = [float(np.nanmean(same[c][ok[c]])) if ok[c].any() else None for c in range(count)]
        del same
        order = self._columns(self.same_order)
        ordered = ~np.isnan(order)
        in_order = [float(order[c][ordered[c]].mean()) if ordered[c].any() else None for c in range(count)]
        del order, ordered
        margin = self._columns(self.flip_margin)
        flips = [margin[c][~np.isnan(margin[c])] for c in range(count)]
        del margin
        gap = self._columns(self.boundary_gap)
        rows = []
        for c, layer in enumerate(self.layers):
            gaps = gap[c][~np.isnan(gap[c])]
            flip = flips[c]
            rows.append(
                {
                    "layer_index": layer,
                    "compared_tokens": compared[c],
                    "mean_topk_jaccard": jaccard[c],
                    "mean_jsd_bits": mean_jsd[c],
                    "max_jsd_bits": max_jsd[c],
                    "top1_agreement": top1[c],
                    "identical_topk_set": identical[c],
                    "same_order_given_set": in_order[c],
                    "flips_with_margin": int(flip.size),
                    "median_flip_margin": float(np.median(flip)) if flip.size else None,
                    "median_boundary_gap": float(np.median(gaps)) if gaps.size else None,
                    "flips_below_boundary_gap_p10": (
                        float((flip < np.quantile(gaps, 0.1)).mean()) if flip.size and gaps.size else None
                    ),
                }
            )
        return rows

    def to_dict(self, worst: int = 5) -> dict[str, Any]:
        overall = self.jaccard[~np.isnan(self.jaccard)]
        self.release()
        mean_jaccard = float(overall.mean()) if overall.size else None
        compared = bool(overall.size)
        del overall
        means: dict[str, float | None] = {}
        for key, array, wanted in (
            ("mean_jsd_bits", self.jsd, None),
            ("top1_agreement", self.top1_agree, compared),
            ("identical_topk_set", self.same_set, compared),
            ("same_order_given_set", self.same_order, None),
        ):
            if wanted is None:
                wanted = bool((~np.isnan(array)).any())
            means[key] = float(np.nanmean(array)) if wanted else None
            self.release()
        agreement = self.token_agreement()
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "tokens_a": self.tokens_a,
            "tokens_b": self.tokens_b,
            "aligned_tokens": self.aligned,
            "layers": self.layers,
            "token_ids_differ_at": self.token_id_differs,
            "mean_topk_jaccard": mean_jaccard,
            "mean_jsd_bits": means["mean_jsd_bits"],
            "top1_agreement": means["top1_agreement"],
            "identical_topk_set": means["identical_topk_set"],
            "same_order_given_set": means["same_order_given_set"],
            "per_layer": self.layer_summary(),
            "worst_tokens": [
                {"token": t, "mean_topk_jaccard": v} for t, v in self.worst_tokens(worst, agreement)
            ],
            "token_agreement": [None if np.isnan(v) else float(v) for v in agreement],
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
    result: np.ndarray = np.maximum(0.0, (_kl_rows(p, m) + _kl_rows(q, m)) / 2)
    return result


def _kl_rows(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per row, the sum of a * log2(a / m) over a > 0, in one buffer: each term is the same
    float as written out in full (where a > 0, m >= a / 2 > 0; elsewhere log2(1) * 0 = 0)."""
    term = _scratch(a.shape, a.dtype)
    positive = a > 0
    if positive.all():  # every term divides (a masked divide is the slower loop)
        np.divide(a, m, out=term)
    else:
        term.fill(1.0)
        np.divide(a, m, out=term, where=positive)
    np.log2(term, out=term)
    term *= a
    sums: np.ndarray = term.sum(axis=1)
    return sums


_SCRATCH: dict[tuple[tuple[int, ...], Any], np.ndarray] = {}


def _scratch(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A working buffer reused from call to call (a fresh one each block costs its page faults)."""
    key = (shape, np.dtype(dtype))
    buffer = _SCRATCH.get(key)
    if buffer is None:
        if len(_SCRATCH) > 8:
            _SCRATCH.clear()
        buffer = _SCRATCH[key] = np.empty(shape, dtype)
    return buffer


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
        event = ROUTING_DECODER.decode(reader.raw_line(t))
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
            try:
                token = reader.token_event(t)
            except IndexError:  # past the last event
                return {}
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
    def shared(cls, rows: int, columns: int) -> _Arrays:
        """NaN arrays in an unlinked file that forked processes map too (a half compared in
        another process lands here directly: nothing is sent back or joined). Rows done are
        given back to the file (``release``), so a process holds only the rows it works on."""
        out = cls.__new__(cls)
        size = rows * columns * 8
        region = -(-max(size, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            mapped = _nan_file(region * len(cls.NAMES))
        except OSError:  # no room for the file: shared memory, as the arrays were before
            mapped = mmap.mmap(-1, region * len(cls.NAMES))
            np.frombuffer(mapped, dtype=np.float64).fill(np.nan)
        for place, name in enumerate(cls.NAMES):
            array = np.frombuffer(mapped, dtype=np.float64, count=rows * columns, offset=place * region)
            setattr(out, name, array.reshape(rows, columns))
        out.spill = _Spill(mapped, region, columns * 8)
        return out

    spill: _Spill | None = None

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Give rows ``start .. stop - 1`` of every array back to their file (a no-op in memory)."""
        if self.spill is not None:
            self.spill.release(start, stop)

    def rows(self, start: int, stop: int) -> _Arrays:
        """Rows ``start .. stop - 1``, as views (writes land in these arrays)."""
        out = _Arrays.__new__(_Arrays)
        out.spill = None
        for name in self.NAMES:
            setattr(out, name, getattr(self, name)[start:stop])
        return out

    @classmethod
    def joined(cls, parts: list[_Arrays], columns: int) -> _Arrays:
        out = cls(0, columns)
        if parts:
            for name in cls.NAMES:
                setattr(out, name, np.concatenate([getattr(part, name) for part in parts]))
        return out


def _nan_file(size: int) -> mmap.mmap:
    """A shared mapping of an unlinked temporary file of ``size`` bytes of NaN (written through
    the file, not the mapping, so no page of it is in this process yet)."""
    with tempfile.TemporaryFile() as handle:  # the mapping outlives the name and the handle
        nan = np.full(1 << 17, np.nan).tobytes()
        left = size
        while left:
            left -= handle.write(nan[: min(len(nan), left)])
        handle.flush()
        return mmap.mmap(handle.fileno(), size)


class _Spill:
    """The file behind shared arrays: one page-aligned region per array."""

    def __init__(self, mapped: mmap.mmap, region: int, row_bytes: int) -> None:
        self.mapped, self.region, self.row_bytes = mapped, region, row_bytes

    def release(self, start: int = 0, stop: int | None = None) -> None:
        first = start * self.row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
        end = self.region if stop is None else min(self.region, stop * self.row_bytes)
        if end <= first:
            return
        for place in range(len(_Arrays.NAMES)):
            self.mapped.madvise(mmap.MADV_DONTNEED, place * self.region + first, end - first)


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
    """Compare two bundles event by event (BundleOpenError if either cannot be opened or has no
    readable raw trace).

    Readers already open (with their offset index built) are used as they are, so a caller that
    has both runs open does not scan either file again. Two v0.1.0 runs are read a block of
    events at a time by worker processes and compared a block at a time (the same numbers).
    """
    a = run_a if isinstance(run_a, RunReader) else RunReader(run_a)
    b = run_b if isinstance(run_b, RunReader) else RunReader(run_b)
    _refuse_without_trace(a, "A")
    _refuse_without_trace(b, "B")
    fast = READ_BY_BLOCKS
    by_blocks = fast and all(
        r.profile == "v0.1" and r.raw_problem is None and not r.index_ready for r in (a, b)
    )
    by_arrays = fast and _v02_ready(a) and _v02_ready(b)
    unknown = 1 << 62  # read by blocks: the lengths are known at the end (event 0 first)
    first_a = _first_layers(a, unknown if by_blocks or by_arrays else len(a))
    first_b = _first_layers(b, unknown if by_blocks or by_arrays else len(b))
    layers = sorted(set(first_a) | set(first_b))
    found = _Found()
    if by_blocks:
        arr, na, nb = _compare_blocks(a, b, layers, found)
    elif by_arrays:
        arr, na, nb = _compare_v02(a, b, layers, found)
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
        release=arr.release,
    )


def _refuse_without_trace(reader: RunReader, label: str) -> None:
    """A run whose raw trace is missing or cannot be read has no tokens to compare: comparing it
    would report zero aligned tokens as if that were a finding."""
    problem = reader.raw_problem
    if problem is not None:
        raise BundleOpenError(f"run {label} ({reader.run_dir}): {problem.specific}; nothing to compare")


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


#: compare a block of tokens at a time (False: token by token, the reference the block paths are
#: tested against)
READ_BY_BLOCKS = True
#: tokens of two v0.2 runs compared at a time from their array files
V02_BLOCK = 256  # x 16 layers x 64 experts: the temporaries stay in cache
#: a v0.2 pair this long (tokens) is compared into file-backed arrays even in one process
FILE_BACKED_FROM = 8 * V02_BLOCK


class _Meta(msgspec.Struct, gc=False):
    token_id: Any = None


_META = msgspec.json.Decoder(_Meta)


def _v02_ready(reader: RunReader) -> bool:
    """A v0.2 run whose arrays can be read a block at a time (every declared file usable, each
    layer routed at one site); anything else is compared token by token."""
    if reader.profile != "v0.2" or reader.routing is None or reader.raw_problem is not None:
        return False
    sidecar = reader.sidecar()
    seen: set[int] = set()
    for group in reader.routing.groups:
        if any(relpath not in sidecar.files for relpath in group.arrays.values()):
            return False
        if seen & set(group.layers) or group.top_k < 1:
            return False
        seen |= set(group.layers)
    return True


@dataclass(slots=True)
class _V02Unit:
    """Layers of one group over a window of tokens: selections ``[n, C, k]``, scores
    ``[n, C, E]`` (None: top-k only) and bias ``[C, E]`` of its ``C`` layers."""

    layers: tuple[int, ...]
    selected: np.ndarray
    scores: np.ndarray | None
    bias: np.ndarray | None
    score_function: str
    experts: int
    sound: bool = True  # False: a malformed bias; its tokens go token by token

    def part(self, slot: int) -> _V02Unit:
        bias_ok = self.bias is not None and slot < len(self.bias)
        return _V02Unit(
            (self.layers[slot],),
            self.selected[:, slot : slot + 1],
            None if self.scores is None else self.scores[:, slot : slot + 1],
            self.bias[slot : slot + 1] if bias_ok and self.bias is not None else None,
            self.score_function,
            self.experts,
            self.sound,
        )


def _v02_window(reader: RunReader, start: int, stop: int) -> tuple[list[_V02Unit], int]:
    """The groups of tokens ``start .. stop - 1`` and how many of those rows every array holds."""
    assert reader.routing is not None
    sidecar = reader.sidecar()
    out: list[_V02Unit] = []
    rows = stop - start
    for group in reader.routing.groups:
        selected = sidecar.rows(group, "selected", start, stop)
        scores = sidecar.rows(group, "scores", start, stop) if "scores" in group.arrays else None
        bias = sidecar.whole(group, "bias") if group.selection.bias else None
        if selected is None:
            return [], 0
        rows = min(rows, selected.shape[0], rows if scores is None else scores.shape[0])
        shape = (len(group.layers), group.num_experts)
        out.append(
            _V02Unit(
                group.layers,
                selected.astype(np.int64),
                None if scores is None else scores.astype(np.float64),
                None if bias is None else bias.astype(np.float64),
                group.score_function,
                group.num_experts,
                bias is None or bias.shape == shape,
            )
        )
    return out, rows


def _v02_pairs(units_a: list[_V02Unit], units_b: list[_V02Unit]) -> list[tuple[_V02Unit, _V02Unit]]:
    """Units of A and B to compare at once: whole groups where both runs group the same layers
    alike (the usual case), else layer by layer."""
    pairs = []
    by_layers = {unit.layers: unit for unit in units_b}
    for unit in units_a:
        other = by_layers.get(unit.layers)
        if other is not None and other.experts == unit.experts:
            pairs.append((unit, other))
            continue
        parts_b = {
            part.layers[0]: part for o in units_b for part in (o.part(i) for i in range(len(o.layers)))
        }
        for slot, layer in enumerate(unit.layers):
            if layer in parts_b:
                pairs.append((unit.part(slot), parts_b[layer]))
    return pairs


def _v02_ids(reader: RunReader, chunk_bytes: int = 4 << 20) -> Iterator[tuple[bool, Any]]:
    """(readable, token_id) of every token line, in order, as ``token_event`` reads them: the
    lines of each chunk decoded in one call, line by line only in a chunk where one fails."""
    for block in line_chunks(reader.raw_path, chunk_bytes):
        try:
            decoded = _META.decode_lines(block)
        except DECODE_FAILURES:
            yield from _v02_ids_one_by_one(block)
            continue
        for meta in decoded:
            value = meta.token_id
            yield True, value if isinstance(value, int) and not isinstance(value, bool) else None


def _v02_ids_one_by_one(block: bytes) -> Iterator[tuple[bool, Any]]:
    for line in block.split(b"\n"):
        if not line.strip(b" \t\r"):
            continue
        if line.startswith(b"\xef\xbb\xbf"):
            yield False, None
            continue
        try:
            value = _META.decode(line).token_id
        except DECODE_FAILURES:
            yield False, None
            continue
        yield True, value if isinstance(value, int) and not isinstance(value, bool) else None


def _distributions(unit: _V02Unit) -> tuple[np.ndarray | None, np.ndarray]:
    """(the distribution of every cell by the score function's definition, as
    ``LayerEvent.distribution``, or None without scores; which cells ``[n, C]`` have one)."""
    scores = unit.scores
    if scores is None:
        return None, np.ones(unit.selected.shape[:2], dtype=bool)
    finite = np.isfinite(scores).all(axis=-1) & (scores.shape[-1] > 0)
    if unit.score_function == "logits":
        z = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True), finite
    if unit.score_function in ("sigmoid", "sqrt_softplus"):
        total = scores.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = scores / total
        return share, finite & (total[..., 0] > 0)
    if unit.score_function == "softmax":
        return scores, finite
    return None, np.zeros(scores.shape[:2], dtype=bool)


def _sound_ids(unit: _V02Unit, n: int) -> np.ndarray:
    """``[n]``: every layer's selection in range and without a repeated id."""
    picks = unit.selected[:n]
    in_range = ((picks >= 0) & (picks < unit.experts)).all(axis=(1, 2))
    repeated = (np.diff(np.sort(picks, axis=-1), axis=-1) == 0).any(axis=(1, 2))
    result: np.ndarray = in_range & ~repeated
    return result


def _compare_v02(a: RunReader, b: RunReader, layers: list[int], found: _Found) -> tuple[_Arrays, int, int]:
    """Two v0.2 runs from their array files, a block of tokens at a time, vectorised per layer;
    every token the arrays cannot answer for alike is compared on its own, as token by token.

    A long pair is split in two at a block boundary: a forked process compares the second half
    into the same (shared) arrays while this one compares the first; the numbers are the ones
    one process makes, block for block."""
    split = _v02_split(a, b)
    if split is None:
        count = min(a.count(), b.count())
        if count < FILE_BACKED_FROM:
            return _v02_range(a, b, layers, found, 0, None, None)
        # one process (threads running, one core): still into the file-backed arrays, a block at
        # a time, so memory stays flat and nothing is joined at the end
        arr, na, nb = _v02_range(a, b, layers, found, 0, None, _Arrays.shared(count, len(layers)))
        if min(na, nb) == count:
            return arr, na, nb
        return _v02_in_memory(a, b, layers, found)  # never expected: fewer tokens than the runs hold
    count, half = split
    arr = _Arrays.shared(count, len(layers))
    helper = ForkedCall(_v02_half, a, b, layers, half, arr)
    try:
        _v02_range(a, b, layers, found, 0, half, arr)
        try:
            outcome = helper.result()
        except Exception:  # the helper failed or died: this process compares the whole pair
            outcome = None
    finally:
        helper.close()
    if not isinstance(outcome, tuple) or min(outcome[0], outcome[1]) != count:  # never expected
        return _v02_in_memory(a, b, layers, found)
    na, nb, rest = outcome
    found.differs += rest.differs
    found.mismatched |= rest.mismatched
    found.unreadable += rest.unreadable
    return arr, na, nb


def _v02_in_memory(a: RunReader, b: RunReader, layers: list[int], found: _Found) -> tuple[_Arrays, int, int]:
    """The whole pair again in one process and in memory, ``found`` replaced by what it finds."""
    fresh = _Found()
    result = _v02_range(a, b, layers, fresh, 0, None, None)
    found.differs[:], found.mismatched, found.unreadable[:] = (
        fresh.differs,
        fresh.mismatched,
        fresh.unreadable,
    )
    return result


def _v02_split(a: RunReader, b: RunReader) -> tuple[int, int] | None:
    """(tokens compared, first token of the second half) where the pair is worth two processes."""
    if not can_fork_beside():
        return None
    count = min(a.count(), b.count())
    half = (count // 2) // V02_BLOCK * V02_BLOCK
    return (count, half) if half >= 8 * V02_BLOCK else None


def _v02_half(
    a: RunReader, b: RunReader, layers: list[int], first: int, arr: _Arrays
) -> tuple[int, int, _Found]:
    """(In the forked process.) The pair from token ``first`` into the shared arrays."""
    found = _Found()
    _, na, nb = _v02_range(a, b, layers, found, first, None, arr)
    return na, nb, found


def _v02_range(
    a: RunReader,
    b: RunReader,
    layers: list[int],
    found: _Found,
    first: int,
    last: int | None,
    target: _Arrays | None,
) -> tuple[_Arrays, int, int]:
    """Blocks from token ``first`` (a block boundary) to ``last`` (None: the end, and both runs'
    lengths counted), into ``target`` (rows are tokens) or new arrays."""
    ids_a, ids_b = _v02_ids(a), _v02_ids(b)
    lengths = [0, 0]
    if first:
        lengths = [sum(1 for _ in itertools.islice(it, first)) for it in (ids_a, ids_b)]
    parts: list[_Arrays] = []
    start = first
    while last is None or start < last:
        meta_a = list(itertools.islice(ids_a, V02_BLOCK))
        meta_b = list(itertools.islice(ids_b, V02_BLOCK))
        lengths[0] += len(meta_a)
        lengths[1] += len(meta_b)
        n = min(len(meta_a), len(meta_b))
        if n == 0:
            break
        stop = start + n
        meta = list(zip(meta_a[:n], meta_b[:n], strict=True))
        arr = _Arrays(n, len(layers)) if target is None else target.rows(start, stop)
        _v02_block(a, b, start, stop, meta, arr, layers, found)
        if target is None:
            parts.append(arr)
        else:
            target.release(start, stop)
        start = stop
        if n < V02_BLOCK:
            break
    if last is None:
        lengths[0] += sum(1 for _ in ids_a)
        lengths[1] += sum(1 for _ in ids_b)
    return (_Arrays.joined(parts, len(layers)) if target is None else target), lengths[0], lengths[1]


def _v02_block(
    a: RunReader,
    b: RunReader,
    start: int,
    stop: int,
    meta: list[tuple[tuple[bool, Any], tuple[bool, Any]]],
    arr: _Arrays,
    layers: list[int],
    found: _Found,
) -> None:
    """Tokens ``start .. stop - 1`` into ``arr`` (its row 0 is token ``start``)."""
    readable = np.array([x[0] and y[0] for x, y in meta], dtype=bool)
    (ua, rows_a), (ub, rows_b) = _v02_window(a, start, stop), _v02_window(b, start, stop)
    n = stop - start
    ok = readable.copy()
    ok[min(rows_a, rows_b) :] = False
    plans = []
    for x, y in _v02_pairs(ua, ub):
        if x.selected.shape[0] < n or y.selected.shape[0] < n:
            ok[:] = False
            break
        valid = _sound_ids(x, n) & _sound_ids(y, n) & x.sound & y.sound
        if x.selected.shape[-1] != y.selected.shape[-1] or x.experts != y.experts:  # token by token
            valid[:] = False
        dx, fx = _distributions(x)
        dy, fy = _distributions(y)
        scored = False
        if x.scores is not None and y.scores is not None:  # both distributions, or not comparable
            scored = dx is not None and dy is not None
            valid &= (fx & fy).all(axis=1) if scored else False
        elif x.scores is not None or y.scores is not None:  # one side's keys: finite ones only
            own = x.scores if x.scores is not None else y.scores
            assert own is not None
            valid &= np.isfinite(own).all(axis=(1, 2))
        ok &= valid
        plans.append((x, y, dx, dy, scored))
    if len({x.experts for x, _y, _dx, _dy, scored in plans if scored}) > 1:
        ok[:] = False  # layers of several sizes: token by token compares each on its own
    rows = np.flatnonzero(ok)
    # every row: views of the windows, not copies (the same numbers)
    take: Any = slice(0, n) if rows.size == n else rows
    for x, y, dx, dy, scored in plans:
        if not rows.size:
            break
        cols = np.array([layers.index(layer) for layer in x.layers])
        keys_a = None if x.scores is None else x.scores[take] + (0.0 if x.bias is None else x.bias)
        keys_b = (
            None
            if keys_a is not None or y.scores is None
            else y.scores[take] + (0.0 if y.bias is None else y.bias)
        )
        own_is_a = keys_a is not None
        _fill(
            arr,
            np.ix_(rows, cols),
            x.selected[take],
            y.selected[take],
            (dx[take], dy[take]) if scored and dx is not None and dy is not None else None,
            keys_a if own_is_a else keys_b,
            own_is_a,
        )
    for r in rows:
        if meta[r][0][1] != meta[r][1][1]:
            found.differs.append(start + int(r))
    for r in np.flatnonzero(~ok):
        _token_by_token(a, b, start + int(r), arr, int(r), layers, found)


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
    px, tx = _picked(wa, rows, ia)
    py, ty = _picked(wb, rows, ib)
    for r in rows:
        if wa.token_ids[r] != wb.token_ids[r]:
            found.differs.append(wa.start + int(r))
    _fill(arr, np.ix_(rows, cols), tx, ty, (px, py), px, True)
    filled: np.ndarray = done
    return filled


def _picked(window: RoutingBlock, rows: np.ndarray, columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, top-k ids) of ``rows`` and layer ``columns`` of a window: the arrays
    themselves where that is all of them (the usual case), else copies."""
    if rows.size == window.count and columns == list(range(len(window.layers))):
        return window.probs, window.topk
    return window.probs[rows][:, columns], window.topk[rows][:, columns]


def _fill(
    arr: _Arrays,
    where: Any,
    tx: np.ndarray,
    ty: np.ndarray,
    dists: tuple[np.ndarray, np.ndarray] | None,
    keys: np.ndarray | None,
    own_is_a: bool,
) -> None:
    """The numbers of many (token, layer) cells at once, exactly as ``_compare_token`` makes
    them one by one. ``tx``/``ty``: ``[..., k]`` selections (ids in range, none repeated, k >= 1);
    ``dists``: both distributions ``[..., E]`` (None: a run without scores, the selections
    alone); ``keys``: the selection keys of the run whose keys the margins use (A's if
    ``own_is_a``), None if neither has them."""
    experts = keys.shape[-1] if keys is not None else (dists[0].shape[-1] if dists is not None else None)
    size = experts if experts is not None else int(max(tx.max(), ty.max())) + 1
    chosen, others = (tx, ty) if own_is_a or keys is None else (ty, tx)  # whose keys, the other
    mask = np.zeros((*chosen.shape[:-1], size), dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=-1)
    shared = np.take_along_axis(mask, others, axis=-1)  # each of the other run's ids: chosen here?
    inter = shared.sum(axis=-1)  # no id repeats: the size of the intersection
    union = tx.shape[-1] + ty.shape[-1] - inter
    same = (inter == tx.shape[-1]) & (tx.shape[-1] == ty.shape[-1])
    arr.jaccard[where] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    arr.same_set[where] = same.astype(np.float64)
    arr.same_order[where] = np.where(same, (tx == ty).all(axis=-1).astype(np.float64), np.nan)
    if dists is not None:
        px, py = dists
        arr.jsd[where] = jensen_shannon_rows(
            px.reshape(-1, px.shape[-1]), py.reshape(-1, py.shape[-1])
        ).reshape(same.shape)
        arr.agree[where] = (np.argmax(px, axis=-1) == np.argmax(py, axis=-1)).astype(np.float64)
    else:  # no scores to rank: the first expert each recorded
        arr.agree[where] = (tx[..., 0] == ty[..., 0]).astype(np.float64)
    if keys is None:
        return
    k = chosen.shape[-1]
    ranked = np.sort(keys, axis=-1)[..., ::-1]
    arr.boundary_gap[where] = ranked[..., k - 1] - ranked[..., k] if k < keys.shape[-1] else np.nan
    missing = ~shared  # the ids the other run chose and this one did not
    own_min = np.take_along_axis(keys, chosen, axis=-1).min(axis=-1)
    other_max = np.where(missing, np.take_along_axis(keys, others, axis=-1), -np.inf).max(axis=-1)
    arr.flip_margin[where] = np.where(missing.any(axis=-1), own_min - other_max, np.nan)


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
