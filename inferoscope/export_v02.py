"""Parquet export of a contract v0.2 run: one row per token x MoE layer, written block by block
straight from the array files (nothing holds the whole run).

Columns: the token's metadata, then per layer ``layer_index``, ``num_experts``,
``score_function``, ``scores`` (the router's score of every expert, a fixed-size list when every
group has the same number of experts; null where the run records no scores), ``selected`` (the
model's order), ``weights`` (null where not recorded), ``top1_expert`` (the first selected), and
``entropy`` / ``normalized_entropy`` of the scores' distribution by its definition
(docs/contract-v0.2.md §5; null without scores).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from .arrays.drop_behind import DropBehindFile
from .bundle.lines import line_blocks
from .bundle.reader import RunReader
from .events import meta_fields
from .jsonfmt import DECODE_FAILURES, JSONParseError, parse_json_bytes
from .textsafe import without_surrogates
from .write_behind import WriteBehind

BLOCK_TOKENS = 1024
ENTROPY_ROWS = 2048  # rows of scores a step of the entropy (1 MiB of float64 at 64 experts)
INT64 = (-(2**63), 2**63 - 1)


def v02_schema(experts: int | None) -> Any:
    import pyarrow as pa

    scores = pa.list_(pa.float32(), experts) if experts else pa.list_(pa.float32())
    return pa.schema(
        [
            ("run_id", pa.string()),
            ("token_index", pa.int64()),
            ("token_id", pa.int64()),
            ("token_id_text", pa.string()),
            ("token_text", pa.string()),
            ("context_length", pa.int64()),
            ("decode_duration_ms", pa.float64()),
            ("document_index", pa.int64()),
            ("source", pa.string()),
            ("layer_index", pa.int32()),
            ("num_experts", pa.int32()),
            ("score_function", pa.string()),
            ("scores", scores),
            ("selected", pa.list_(pa.int32())),
            ("weights", pa.list_(pa.float32())),
            ("top1_expert", pa.int32()),
            ("entropy", pa.float64()),
            ("normalized_entropy", pa.float64()),
        ]
    )


def write_v02_rows(reader: RunReader, writer: Any, run_id: str, result: Any) -> None:
    """Every row of a (validated) v0.2 run into ``writer`` (a ``pq.ParquetWriter``)."""
    import pyarrow as pa

    assert reader.routing is not None
    sidecar = reader.sidecar()
    experts = {g.num_experts for g in reader.routing.groups}
    fixed = next(iter(experts)) if len(experts) == 1 else None
    schema = v02_schema(fixed)
    start = 0
    for lines in line_blocks(reader.raw_path, BLOCK_TOKENS):
        stop = start + len(lines)
        metas = _metas(lines, start, result)
        parts: list[dict[str, Any]] = []
        for group in reader.routing.groups:
            t, lg = stop - start, len(group.layers)
            selected = sidecar.rows(group, "selected", start, stop)
            if selected is None:
                continue
            weights = sidecar.rows(group, "weights", start, stop)
            scores = sidecar.rows(group, "scores", start, stop)
            entropy = _entropy(scores, group.score_function) if scores is not None else None
            parts.append(
                {
                    "token": np.repeat(np.arange(start, stop), lg),
                    "layer": np.tile(np.asarray(group.layers, dtype=np.int64), t),
                    "experts": group.num_experts,
                    "function": group.score_function,
                    "selected": _cells(selected, t * lg, np.int32),
                    "weights": None if weights is None else _cells(weights, t * lg, np.float32),
                    "scores": None if scores is None else _cells(scores, t * lg, np.float32),
                    "entropy": entropy,
                }
            )
        table = _table(parts, metas, start, run_id, schema, fixed)
        if table.num_rows:
            writer.write_table(table)
            result.rows += table.num_rows
        start = stop
    if result.rows == 0:
        writer.write_table(pa.Table.from_pylist([], schema=schema))


class _Timing(msgspec.Struct):
    decode_start: float | None = None
    decode_end: float | None = None
    decode_duration: float | None = None


class _Meta(msgspec.Struct):
    """The per-token fields, typed: a line any field of which has another type fails the block's
    decode, and the block is read line by line (``meta_fields``, tolerant of any type)."""

    token_index: int | None = None
    token_id: int | None = None
    token_text: str | None = None
    context_length: int | None = None
    timing_ms: _Timing | None = None
    document_index: int | None = None
    source: str | None = None


_META_LINES = msgspec.json.Decoder(_Meta)
_META_KEYS = ("token_index", "token_id", "token_text", "context_length", "document_index", "source")


def _metas(lines: list[bytes], start: int, result: Any) -> dict[str, list[Any]]:
    """The per-token fields of the tokens from ``start`` whose lines are ``lines``, as columns
    (``duration``: the decode duration where the timing has all three numbers)."""
    try:
        typed = _META_LINES.decode_lines(b"\n".join(lines))
    except DECODE_FAILURES:
        typed = None
    if typed is not None and len(typed) == len(lines):
        columns = {key: [getattr(m, key) for m in typed] for key in _META_KEYS}
        columns["duration"] = [
            None
            if (t := m.timing_ms) is None
            or t.decode_start is None
            or t.decode_end is None
            or t.decode_duration is None
            else t.decode_duration
            for m in typed
        ]
        return columns
    metas: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start):
        try:
            obj = parse_json_bytes(line)
        except JSONParseError:
            result.skip("unreadable event", f"event {i}", event=True)
            metas.append({})
            continue
        metas.append(meta_fields(obj) if isinstance(obj, dict) else {})
    columns = {key: [m.get(key) for m in metas] for key in _META_KEYS}
    columns["duration"] = [None if m.get("timing") is None else m["timing"][2] for m in metas]
    return columns


def _entropy(scores: np.ndarray, function: str) -> np.ndarray | None:
    """Each row's entropy, computed ``ENTROPY_ROWS`` rows at a time in reused buffers (the same
    operations on every number, so the same floats; a block's worth of fresh float64 arrays was
    a third of the export's reading, most of it the first touch of their pages)."""
    if function not in ("logits", "sigmoid", "sqrt_softplus", "softmax"):
        return None
    rows = scores.reshape(-1, scores.shape[-1])
    result = np.empty(rows.shape[0])
    step = ENTROPY_ROWS
    buffer = np.empty((min(step, rows.shape[0]), rows.shape[1]))
    logs = np.empty_like(buffer)
    for first in range(0, rows.shape[0], step):
        part = rows[first : first + step]
        probs, work = buffer[: part.shape[0]], logs[: part.shape[0]]
        np.copyto(probs, part)  # float64, as the entropy's definition is computed
        if function == "logits":
            probs -= probs.max(axis=1, keepdims=True)
            np.exp(probs, out=probs)
            probs /= probs.sum(axis=1, keepdims=True)
        elif function in ("sigmoid", "sqrt_softplus"):
            total = probs.sum(axis=1, keepdims=True)
            probs[...] = np.where(total > 0, probs / np.where(total > 0, total, 1.0), 0.0)
        work.fill(0.0)  # log p where p > 0, else 0
        np.log(probs, out=work, where=probs > 0)
        work *= probs
        np.negative(work.sum(axis=1), out=result[first : first + part.shape[0]])
    return result


def _table(
    parts: list[dict[str, Any]],
    metas: dict[str, list[Any]],
    start: int,
    run_id: str,
    schema: Any,
    fixed: int | None,
) -> Any:
    import pyarrow as pa

    if not parts:
        return pa.Table.from_pylist([], schema=schema)
    token = np.concatenate([p["token"] for p in parts])
    layer = np.concatenate([p["layer"] for p in parts])
    order = np.lexsort((layer, token))  # token by token, layers ascending, as v0.1.0's export
    columns: dict[str, Any] = {}
    # each token's fields made once, then taken for each of its layer rows
    rows = pa.array((token[order] - start).astype(np.int64))
    ids = metas["token_id"]
    per_token = {
        "token_index": pa.array(metas["token_index"], pa.int64()),
        "token_id": pa.array(
            [i if i is not None and INT64[0] <= i <= INT64[1] else None for i in ids], pa.int64()
        ),
        "token_id_text": pa.array([None if i is None else str(i) for i in ids], pa.string()),
        "token_text": pa.array(
            [None if t is None else without_surrogates(t) for t in metas["token_text"]], pa.string()
        ),
        "context_length": pa.array(metas["context_length"], pa.int64()),
        "decode_duration_ms": pa.array(
            [None if d is None else _finite(d) for d in metas["duration"]], pa.float64()
        ),
        "document_index": pa.array(metas["document_index"], pa.int64()),
        "source": pa.array(
            [None if t is None else without_surrogates(t) for t in metas["source"]], pa.string()
        ),
    }
    columns["run_id"] = pa.array([run_id], pa.string()).take(pa.array(np.zeros(order.size, dtype=np.int64)))
    for name, values in per_token.items():
        columns[name] = values.take(rows)
    columns["layer_index"] = pa.array(layer[order].astype(np.int32), pa.int32())
    columns["num_experts"] = pa.array(
        np.concatenate([np.full(p["token"].size, p["experts"]) for p in parts])[order].astype(np.int32)
    )
    groups = np.concatenate([np.full(p["token"].size, g, dtype=np.int64) for g, p in enumerate(parts)])[order]
    columns["score_function"] = pa.array([p["function"] for p in parts], pa.string()).take(pa.array(groups))
    columns["scores"] = _lists(parts, "scores", order, schema.field("scores").type, fixed)
    columns["selected"] = _lists(parts, "selected", order, pa.list_(pa.int32()), None)
    columns["weights"] = _lists(parts, "weights", order, pa.list_(pa.float32()), None)
    first = np.concatenate([p["selected"][:, 0] for p in parts])[order]
    columns["top1_expert"] = pa.array(first.astype(np.int32), pa.int32())
    entropy = np.concatenate(
        [p["entropy"] if p["entropy"] is not None else np.full(p["token"].size, np.nan) for p in parts]
    )[order]
    logn = np.concatenate(
        [np.full(p["token"].size, math.log(p["experts"]) if p["experts"] > 1 else np.nan) for p in parts]
    )[order]
    columns["entropy"] = pa.array(entropy, pa.float64(), mask=np.isnan(entropy))
    normalized = np.where(np.isnan(logn), 0.0, entropy / np.where(np.isnan(logn), 1.0, logn))
    columns["normalized_entropy"] = pa.array(normalized, pa.float64(), mask=np.isnan(entropy))
    return pa.table(columns, schema=schema)


def _lists(parts: list[dict[str, Any]], key: str, order: np.ndarray, kind: Any, fixed: int | None) -> Any:
    """One list column from per-group ``[rows, width]`` arrays, built from offsets (no Python
    objects per row); rows of a group that records no such array are null."""
    import pyarrow as pa

    present = [p[key] for p in parts if p[key] is not None]
    if not present:
        return pa.nulls(order.size, kind)
    widths = np.concatenate(
        [np.full(p["token"].size, 0 if p[key] is None else p[key].shape[1]) for p in parts]
    )[order]
    missing = np.concatenate([np.full(p["token"].size, p[key] is None) for p in parts])[order]
    if len({a.shape[1] for a in present}) == 1 and not missing.any():
        if len(present) == 1 and _is_identity(order):  # one group, its layers ascending: no copy
            values = present[0].ravel()
        else:
            values = np.concatenate(present)[order].ravel()
        if fixed is not None:
            return pa.FixedSizeListArray.from_arrays(pa.array(values), fixed)
    else:
        rows = [
            p[key] if p[key] is not None else np.zeros((p["token"].size, 0), dtype=present[0].dtype)
            for p in parts
        ]
        ragged = [row for block in rows for row in block]
        values = np.concatenate([ragged[int(i)] for i in order]) if order.size else np.zeros(0)
    offsets = np.zeros(order.size + 1, dtype=np.int32)
    np.cumsum(widths, out=offsets[1:])
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(values), type=kind, mask=pa.array(missing) if missing.any() else None
    )


def _cells(array: np.ndarray, rows: int, kind: Any) -> np.ndarray:
    """``[tokens, layers, n]`` as ``[rows, n]`` of the column's type (no copy where the file
    holds that type already)."""
    cells: np.ndarray = array.reshape(rows, -1).astype(kind, copy=False)
    return cells


def _is_identity(order: np.ndarray) -> bool:
    return bool((order == np.arange(order.size)).all())


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def export_v02(reader: RunReader, partial: Path, run_id: str, result: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert reader.routing is not None
    experts = {g.num_experts for g in reader.routing.groups}
    schema = v02_schema(next(iter(experts)) if len(experts) == 1 else None)
    # dictionary pages only for the text columns: tried on float scores they cost twice the
    # writing time and a larger file (benchmarks/bench_commands.py, 50,000 tokens: 1.49 s,
    # 236 MB with them; 0.73 s, 206 MB without)
    text_columns = [f.name for f in schema if pa.types.is_string(f.type)]
    # the file is dropped from the page cache as it is written: nothing here reads it again, and
    # fresh cache pages were most of the system time (500,000 tokens: 3.6 -> 2.2 s)
    with (
        DropBehindFile(partial) as sink,
        pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=text_columns) as writer,
        WriteBehind(writer) as behind,  # a row group is written while the next one is made
    ):
        write_v02_rows(reader, behind, run_id, result)
