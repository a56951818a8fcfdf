"""The v0.1.0 raw trace decoded for Parquet export, a block of events at a time.

Workers (``bundle.blocks.ordered_blocks``) decode each block with a typed decoder of exactly the
fields the export writes; the events of the block's common shape come back as arrays (one Arrow
column each, no Python object per value), every other event is marked for the careful
event-by-event path of ``export``, which checks and skips exactly as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from .bundle.lines import iter_lines
from .jsonfmt import DECODE_FAILURES
from .textsafe import without_surrogates

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class _Timing(msgspec.Struct, gc=False):
    decode_duration: float


class _Layer(msgspec.Struct, gc=False):
    layer_index: int
    num_total_experts: int
    num_active_experts: int
    router_probs: list[float]
    topk_indices: list[int]
    topk_probs: list[float]
    entropy: float
    normalized_entropy: float
    top1_prob: float
    top1_top2_margin: float


class _Event(msgspec.Struct, gc=False):
    token_index: int
    token_id: int
    token_text: str
    context_length: int
    timing_ms: _Timing
    layers: list[_Layer]


_DECODER = msgspec.json.Decoder(_Event)


@dataclass(slots=True)
class ExportBlock:
    """Events ``start .. start + count - 1``; where ``regular``, their columns are in the arrays
    (``m`` regular events, ``L`` layers each), in event order."""

    start: int
    count: int
    regular: np.ndarray  # [count] bool
    heads: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))  # index, id, ctx
    durations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    texts: list[str] = field(default_factory=list)
    ints: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.int64))  # [m, L, 3 + k]
    floats: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # [m, L, E + k2 + 4]
    experts: int = 0
    k: int = 0
    k2: int = 0


def decode_export_range(path: Path, start: int, end: int | None, position: int = 0) -> ExportBlock:
    """The events in bytes ``[start, end)``: arrays for those of the block's common shape."""
    regular: list[bool] = []
    heads: list[int] = []
    durations: list[float] = []
    texts: list[str] = []
    ints: list[int] = []
    floats: list[float] = []
    shape: tuple[int, int, int, int] | None = None
    for line in iter_lines(path, start_offset=start, end_offset=end):
        event = _decode(line.data)
        key = _shape(event) if event is not None else None
        if key is not None and shape is None:
            shape = key
        if event is None or key is None or key != shape:
            regular.append(False)
            continue
        regular.append(True)
        heads += (event.token_index, event.token_id, event.context_length)
        durations.append(event.timing_ms.decode_duration)
        texts.append(without_surrogates(event.token_text))
        for la in event.layers:
            ints += (la.layer_index, la.num_total_experts, la.num_active_experts)
            ints += la.topk_indices
            floats += la.router_probs
            floats += la.topk_probs
            floats += (la.entropy, la.normalized_entropy, la.top1_prob, la.top1_top2_margin)
    mask = np.array(regular, dtype=bool)
    if shape is None or not mask.any():
        return ExportBlock(position, len(regular), np.zeros(len(regular), dtype=bool))
    layers, experts, k, k2 = shape
    m = int(mask.sum())
    head_rows = np.array(heads, dtype=np.int64).reshape(m, 3)
    duration_rows = np.array(durations, dtype=np.float64)
    int_rows = np.array(ints, dtype=np.int64).reshape(m, layers, 3 + k)
    float_rows = np.array(floats, dtype=np.float64).reshape(m, layers, experts + k2 + 4)
    keep = np.isfinite(float_rows).all(axis=(1, 2)) & np.isfinite(duration_rows)
    if not keep.all():  # a number past the float range: the careful path decides, as it always did
        mask[np.flatnonzero(mask)[~keep]] = False
        head_rows, duration_rows = head_rows[keep], duration_rows[keep]
        int_rows, float_rows = int_rows[keep], float_rows[keep]
        texts = [text for text, kept in zip(texts, keep.tolist(), strict=True) if kept]
    return ExportBlock(
        position, len(regular), mask, head_rows, duration_rows, texts, int_rows, float_rows, experts, k, k2
    )


def _decode(data: bytes | memoryview | None) -> _Event | None:
    if data is None:
        return None
    try:
        return _DECODER.decode(data)
    except DECODE_FAILURES:
        return None


def _fits(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _shape(event: _Event) -> tuple[int, int, int, int] | None:
    """(layers, experts, k, k2) when every layer has the same lengths and every integer fits
    its column; None sends the event the careful way."""
    layers = event.layers
    if not layers or not (_fits(event.token_index, INT64) and _fits(event.token_id, INT64)):
        return None
    if not _fits(event.context_length, INT64):
        return None
    first = layers[0]
    experts, k, k2 = len(first.router_probs), len(first.topk_indices), len(first.topk_probs)
    if k == 0:
        return None
    for la in layers:
        if len(la.router_probs) != experts or len(la.topk_indices) != k or len(la.topk_probs) != k2:
            return None
        if not all(_fits(v, INT32) for v in (la.layer_index, la.num_total_experts, la.num_active_experts)):
            return None
        if not all(_fits(v, INT32) for v in la.topk_indices):
            return None
    return len(layers), experts, k, k2


def arrow_table(block: ExportBlock, rows: slice, run_id: str, schema: Any, fixed: int | None) -> Any:
    """The Arrow table of the regular events ``rows`` (indices among the block's regular events)."""
    import pyarrow as pa

    heads, ints, floats = block.heads[rows], block.ints[rows], block.floats[rows]
    m, layers = ints.shape[0], ints.shape[1]
    n, e, k, k2 = m * layers, block.experts, block.k, block.k2
    texts = block.texts[rows]

    def each(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, layers)

    flat_ints, flat_floats = ints.reshape(n, -1), floats.reshape(n, -1)
    probs = pa.array(np.ascontiguousarray(flat_floats[:, :e]).reshape(-1), pa.float64())
    if fixed is not None:
        router = pa.FixedSizeListArray.from_arrays(probs, fixed)
    else:
        router = pa.ListArray.from_arrays(pa.array(np.arange(0, n * e + 1, e, dtype=np.int32)), probs)
    topk = np.ascontiguousarray(flat_ints[:, 3:]).astype(np.int32)
    topk_probs = np.ascontiguousarray(flat_floats[:, e : e + k2]).reshape(-1)
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "token_index": pa.array(each(heads[:, 0]), pa.int64()),
        "token_id": pa.array(each(heads[:, 1]), pa.int64()),
        "token_id_text": pa.array([str(v) for v in heads[:, 1].tolist() for _ in range(layers)], pa.string()),
        "token_text": pa.array([text for text in texts for _ in range(layers)], pa.string()),
        "context_length": pa.array(each(heads[:, 2]), pa.int64()),
        "decode_duration_ms": pa.array(each(block.durations[rows]), pa.float64()),
        "layer_index": pa.array(flat_ints[:, 0].astype(np.int32), pa.int32()),
        "num_total_experts": pa.array(flat_ints[:, 1].astype(np.int32), pa.int32()),
        "num_active_experts": pa.array(flat_ints[:, 2].astype(np.int32), pa.int32()),
        "router_probs": router,
        "topk_indices": pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), pa.array(topk.reshape(-1), pa.int32())
        ),
        "topk_probs": pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * k2 + 1, k2, dtype=np.int32)), pa.array(topk_probs, pa.float64())
        ),
        "top1_expert": pa.array(topk[:, 0], pa.int32()),
        "entropy": pa.array(flat_floats[:, e + k2], pa.float64()),
        "normalized_entropy": pa.array(flat_floats[:, e + k2 + 1], pa.float64()),
        "top1_prob": pa.array(flat_floats[:, e + k2 + 2], pa.float64()),
        "top1_top2_margin": pa.array(flat_floats[:, e + k2 + 3], pa.float64()),
    }
    return pa.table(columns, schema=schema)
