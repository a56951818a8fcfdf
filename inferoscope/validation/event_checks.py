"""Semantic checks of raw events, a chunk at a time (contract §4, scope ``raw_event``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..versions import RAW_TRACE_FILE
from .aggregates import RunAggregates
from .issues import Location, ValidationIssue, layer_scope
from .layer_checks import TOL, LayerBlock, build_block, check_block
from .messages import contract_message
from .raw_event import EventView, Layer


def check_event_chunk(
    views: Sequence[EventView],
    aggregates: RunAggregates | None = None,
    file: str | None = RAW_TRACE_FILE,
) -> list[ValidationIssue]:
    """All per-event and per-layer issues of ``views``; folds them into ``aggregates``."""
    issues: list[ValidationIssue] = []
    _check_durations(views, issues, aggregates, file)
    dense_groups: dict[bytes, list[int]] = defaultdict(list)
    sparse: list[int] = []
    for row, view in enumerate(views):
        if view.dense is not None:
            dense_groups[view.dense.signature].append(row)
        else:
            sparse.append(row)
    _check_duplicate_layers(views, sparse, dense_groups, issues, file)
    blocks: list[LayerBlock] = []
    for rows in dense_groups.values():
        blocks += _dense_blocks(views, rows)
    if sparse:
        blocks += _keyed_blocks(views, sparse)
    for block in blocks:
        _check_one_block(block, views, issues, aggregates, file)
    return issues


def _dense_blocks(views: Sequence[EventView], rows: list[int]) -> list[LayerBlock]:
    """Events of one signature stacked; one block for all layers when they share n and k."""
    dense = [d for d in (views[row].dense for row in rows) if d is not None]
    first = dense[0]
    meta, n, k2 = first.meta, first.n, first.k2
    floats = np.stack([d.floats for d in dense])  # [G, L, n + k2 + 4], contiguous
    ints = np.stack([d.ints for d in dense])  # [G, L, 3 + k]
    count, width = floats.shape[0], floats.shape[1]
    event_rows = np.asarray(rows, dtype=np.int64)
    if (meta[:, 1] == meta[0, 1]).all() and (meta[:, 2] == meta[0, 2]).all():
        parts = [(floats.reshape(count * width, -1), ints.reshape(count * width, -1), meta[:, 0], width)]
    else:
        parts = [(floats[:, j], ints[:, j], meta[j : j + 1, 0], 1) for j in range(width)]
    blocks = []
    for f, i, layer_indices, m in parts:
        blocks.append(
            LayerBlock(
                layer_indices=np.tile(layer_indices, count),
                n=int(i[0, 1]),
                k=int(i[0, 2]),
                rows=np.repeat(event_rows, m),
                rp=f[:, :n],
                ti=i[:, 3:],
                tp=f[:, n : n + k2],
                entropy=f[:, n + k2],
                normalized_entropy=f[:, n + k2 + 1],
                top1_prob=f[:, n + k2 + 2],
                margin=f[:, n + k2 + 3],
            )
        )
    return blocks


def _keyed_blocks(views: Sequence[EventView], rows_to_check: list[int]) -> list[LayerBlock]:
    groups: dict[tuple[int, int, int, int, int, int], tuple[list[int], list[Layer]]] = defaultdict(
        lambda: ([], [])
    )
    for row in rows_to_check:
        for layer in views[row].layers:
            key = (
                layer.layer_index,
                layer.num_total_experts,
                layer.num_active_experts,
                len(layer.router_probs),
                len(layer.topk_indices),
                len(layer.topk_probs),
            )
            rows, layers = groups[key]
            rows.append(row)
            layers.append(layer)
    return [
        build_block(layer_index, n, k, rows, layers)
        for (layer_index, n, k, *_), (rows, layers) in sorted(groups.items())
    ]


def _check_one_block(
    block: LayerBlock,
    views: Sequence[EventView],
    issues: list[ValidationIssue],
    aggregates: RunAggregates | None,
    file: str | None,
) -> None:
    n, k = block.n, block.k
    flagged = np.zeros(block.rows.size, dtype=bool)
    for finding in check_block(block):
        flagged[finding.row] = True
        view = views[int(block.rows[finding.row])]
        layer_index = int(block.layer_indices[finding.row])
        issues.append(
            ValidationIssue(
                scope=layer_scope(layer_index),
                code=finding.code,
                message=contract_message(finding.code),
                detail=finding.message,
                location=Location(
                    file=file,
                    line=view.line,
                    token_index=view.token_index,
                    layer_index=layer_index,
                    expert_index=finding.expert_index,
                ),
            )
        )
    if aggregates is None or block.rp.shape[1] != n or block.ti.shape[1] != k:
        return
    usable = ((block.ti >= 0) & (block.ti < n)).all(axis=1) & ~flagged
    rows = block.rows[usable]
    positions = (
        rows + views[0].position
        if views and views[-1].position - views[0].position == len(views) - 1
        else np.fromiter((views[int(r)].position for r in rows), dtype=np.int64, count=rows.size)
    )
    aggregates.add_rows(
        block.layer_indices[usable],
        n,
        k,
        block.ti[usable],
        block.entropy[usable],
        block.normalized_entropy[usable],
        positions,
    )


def _check_durations(
    views: Sequence[EventView],
    issues: list[ValidationIssue],
    aggregates: RunAggregates | None,
    file: str | None,
) -> None:
    timed = [view for view in views if view.timing is not None]
    if not timed:
        return
    timing = np.array([view.timing for view in timed], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # ±1.7e308 timings: a mismatch, not a warning
        expected = timing[:, 1] - timing[:, 0]
        wrong = ~(np.abs(timing[:, 2] - expected) <= TOL)
    for r in np.flatnonzero(wrong):
        view = timed[int(r)]
        issues.append(
            ValidationIssue(
                scope="raw_event",
                code="decode_duration_mismatch",
                message=contract_message("decode_duration_mismatch"),
                detail=(
                    f"timing_ms.decode_duration is {timing[r, 2]:.9g} but decode_end - decode_start "
                    f"is {expected[r]:.9g}"
                ),
                location=Location(file=file, line=view.line, token_index=view.token_index),
            )
        )
    if aggregates is not None:
        aggregates.add_durations(timing[:, 2])


def _check_duplicate_layers(
    views: Sequence[EventView],
    sparse: list[int],
    dense_groups: dict[bytes, list[int]],
    issues: list[ValidationIssue],
    file: str | None,
) -> None:
    for rows in dense_groups.values():
        indices = views[rows[0]].dense.meta[:, 0].tolist()  # type: ignore[union-attr]
        if len(set(indices)) != len(indices):
            for row in rows:
                _report_duplicates(views[row], indices, issues, file)
    for row in sparse:
        indices = views[row].layer_indices
        try:
            if len(set(indices)) == len(indices):
                continue
        except TypeError:  # an unhashable layer_index from a schema-broken dict
            pass
        _report_duplicates(views[row], indices, issues, file)


def _report_duplicates(
    view: EventView, indices: list[object], issues: list[ValidationIssue], file: str | None
) -> None:
    seen: set[str] = set()
    for value in indices:
        key = repr(value)
        if key in seen and value is not None:
            issues.append(
                ValidationIssue(
                    scope=layer_scope(value),
                    code="duplicate_layer_index",
                    message=contract_message("duplicate_layer_index"),
                    detail=f"layer_index {value!r} appears more than once in this event",
                    location=Location(
                        file=file,
                        line=view.line,
                        token_index=view.token_index,
                        layer_index=value if isinstance(value, int) else None,
                    ),
                )
            )
        seen.add(key)
