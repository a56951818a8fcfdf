"""Export and validation of a v0.1.0 raw trace in one pass: every line is decoded once.

Workers (``bundle.blocks.ordered_blocks``) run the validating scan over alternate blocks of the
raw trace; while a line is checked, its typed event (the strict decode) gives the export's
columns too, so the JSON is parsed once for both. This process writes the rows in file order
and merges the blocks' checks in file order, as the validating pass merges its segments. An
event the strict decode did not take whole (or of another shape than the block's) is exported
the careful event-by-event way, as ever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.scan import SegmentJob, SegmentResult, scan_segment
from .export_blocks import INT32, INT64, ExportBlock
from .textsafe import without_surrogates
from .validation.raw_event import EventView


@dataclass(slots=True)
class FusedBlock:
    """One block's checks (lines relative to the block) and its export columns."""

    start: int
    count: int
    checked: SegmentResult
    export: ExportBlock


def fused_decoder(job: SegmentJob) -> Callable[[Path, int, int | None, int], FusedBlock]:
    """The block decoder for ``ordered_blocks``: ``job`` says what to check against."""

    def decode(path: Path, start: int, end: int | None, position: int = 0) -> FusedBlock:
        columns = _Columns()
        checked = scan_segment(job.part(start, end), on_event=columns.add)
        count = checked.report.aggregates.events
        return FusedBlock(position, count, checked, columns.block(position, count))

    return decode


class _Columns:
    """The export columns of the events of the block's common shape, gathered as they are read."""

    def __init__(self) -> None:
        self.regular: list[bool] = []
        self.shape: tuple[int, int, int, int] | None = None
        self.heads: list[int] = []
        self.durations: list[float] = []
        self.texts: list[str] = []
        self.ints: list[np.ndarray] = []
        self.floats: list[np.ndarray] = []

    def add(self, view: EventView, typed: Any) -> None:
        dense = view.dense
        if (
            typed is None
            or dense is None
            or dense.k == 0
            or not _heads_fit(typed)
            or not _ints_fit(dense.ints)
        ):
            self.regular.append(False)
            return
        shape = (dense.ints.shape[0], dense.n, dense.k, dense.k2)
        if self.shape is None:
            self.shape = shape
        if shape != self.shape:
            self.regular.append(False)
            return
        self.regular.append(True)
        self.heads += (typed.token_index, typed.token_id, typed.context_length)
        self.durations.append(typed.timing_ms.decode_duration)
        self.texts.append(without_surrogates(typed.token_text))
        self.ints.append(dense.ints)
        self.floats.append(dense.floats)

    def block(self, position: int, count: int) -> ExportBlock:
        mask = np.array(self.regular, dtype=bool)
        if len(self.regular) != count:  # never expected: every line is seen once
            mask = np.zeros(count, dtype=bool)
        if self.shape is None or not mask.any():
            return ExportBlock(position, count, np.zeros(count, dtype=bool))
        _layers, experts, k, k2 = self.shape
        m = int(mask.sum())
        head_rows = np.array(self.heads, dtype=np.int64).reshape(m, 3)
        duration_rows = np.array(self.durations, dtype=np.float64)
        int_rows = np.stack(self.ints)
        float_rows = np.stack(self.floats)
        texts = self.texts
        keep = np.isfinite(float_rows).all(axis=(1, 2)) & np.isfinite(duration_rows)
        if not keep.all():  # a number past the float range: the careful path decides
            mask[np.flatnonzero(mask)[~keep]] = False
            head_rows, duration_rows = head_rows[keep], duration_rows[keep]
            int_rows, float_rows = int_rows[keep], float_rows[keep]
            texts = [text for text, kept in zip(texts, keep.tolist(), strict=True) if kept]
        return ExportBlock(
            position, count, mask, head_rows, duration_rows, texts, int_rows, float_rows, experts, k, k2
        )


def _heads_fit(typed: Any) -> bool:
    return all(INT64[0] <= v <= INT64[1] for v in (typed.token_index, typed.token_id, typed.context_length))


def _ints_fit(ints: np.ndarray) -> bool:
    """Layer index, expert counts and top-k ids all fit the export's int32 columns."""
    return bool(ints.size == 0 or (ints.min() >= INT32[0] and ints.max() <= INT32[1]))
