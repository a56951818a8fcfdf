"""Semantic checks of raw events, a chunk at a time (SPEC §4, scope ``raw_event``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..versions import RAW_TRACE_FILE
from .aggregates import RunAggregates
from .issues import Location, ValidationIssue, layer_scope
from .layer_checks import TOL, build_block, check_block
from .raw_event import EventView, Layer


def check_event_chunk(
    views: Sequence[EventView],
    aggregates: RunAggregates | None = None,
    file: str | None = RAW_TRACE_FILE,
) -> list[ValidationIssue]:
    """All per-event and per-layer issues of ``views``; folds them into ``aggregates``."""
    issues: list[ValidationIssue] = []
    _check_durations(views, issues, aggregates, file)
    _check_duplicate_layers(views, issues, file)
    groups: dict[tuple[int, int, int, int, int, int], tuple[list[int], list[Layer]]] = defaultdict(
        lambda: ([], [])
    )
    for row, view in enumerate(views):
        for layer in view.layers:
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
    for (layer_index, n, k, *_), (rows, layers) in sorted(groups.items()):
        block = build_block(layer_index, n, k, rows, layers)
        flagged = np.zeros(len(rows), dtype=bool)
        for finding in check_block(block):
            flagged[finding.row] = True
            view = views[rows[finding.row]]
            issues.append(
                ValidationIssue(
                    scope=layer_scope(layer_index),
                    code=finding.code,
                    message=finding.message,
                    location=Location(
                        file=file,
                        line=view.line,
                        token_index=view.where_token,
                        layer_index=layer_index,
                        expert_index=finding.expert_index,
                    ),
                )
            )
        if aggregates is not None and block.rp.shape[1] == n and block.ti.shape[1] == k:
            in_range = ((block.ti >= 0) & (block.ti < n)).all(axis=1) & ~flagged
            aggregates.add_layer_block(
                layer_index, n, k, block.ti[in_range], block.entropy[in_range],
                block.normalized_entropy[in_range],
            )
    return issues


def _check_durations(
    views: Sequence[EventView], issues: list[ValidationIssue], aggregates: RunAggregates | None,
    file: str | None,
) -> None:
    timed = [view for view in views if view.timing is not None]
    if not timed:
        return
    timing = np.array([view.timing for view in timed], dtype=np.float64)
    expected = timing[:, 1] - timing[:, 0]
    for r in np.flatnonzero(np.abs(timing[:, 2] - expected) > TOL):
        view = timed[int(r)]
        issues.append(
            ValidationIssue(
                scope="raw_event",
                code="decode_duration_mismatch",
                message=(
                    f"timing_ms.decode_duration is {timing[r, 2]:.9g} but decode_end - decode_start "
                    f"is {expected[r]:.9g}"
                ),
                location=Location(file=file, line=view.line, token_index=view.where_token),
            )
        )
    if aggregates is not None:
        aggregates.add_durations(timing[:, 2])


def _check_duplicate_layers(
    views: Sequence[EventView], issues: list[ValidationIssue], file: str | None
) -> None:
    for view in views:
        indices = view.layer_indices
        if len(set(map(repr, indices))) == len(indices):
            continue
        seen: set[str] = set()
        for value in indices:
            key = repr(value)
            if key in seen and value is not None:
                issues.append(
                    ValidationIssue(
                        scope=layer_scope(value),
                        code="duplicate_layer_index",
                        message=f"layer_index {value!r} appears more than once in this event",
                        location=Location(
                            file=file,
                            line=view.line,
                            token_index=view.where_token,
                            layer_index=value if isinstance(value, int) else None,
                        ),
                    )
                )
            seen.add(key)
