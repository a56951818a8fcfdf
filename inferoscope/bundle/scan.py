"""The validating pass over raw_trace.ndjson: one segment per core, merged in file order.

Each segment is read in blocks, every line typed-decoded (the reference path only for
lines the typed decode refuses), semantic checks run vectorised per chunk, and the
run-level state (token indices, layer shapes, aggregates, the offset index) is kept in
arrays. Large files are split at line boundaries; a forked worker takes the second half
while this process takes the first, and the results are merged with line numbers shifted.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..validation.bundle_checks import RunChecks
from ..validation.event_checks import check_event_chunk
from ..validation.issues import ValidationIssue
from ..validation.raw_event import EventView
from .lines import LineIndex, LineIndexBuilder, ProgressFn, iter_lines, split_points
from .report import ValidationReport

PARALLEL_MIN_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class SegmentResult:
    """What one segment's pass found; line numbers are relative to the segment."""

    report: ValidationReport
    checks: RunChecks
    index: LineIndex
    lines: int


@contextmanager
def gc_paused() -> Iterator[None]:
    """Decoding makes many short-lived lists; the cyclic GC only slows that down."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def scan_segment(
    path: Path,
    manifest: Mapping[str, Any] | None,
    start: int,
    end: int | None,
    chunk_events: int,
    max_kept: int,
    progress: ProgressFn | None = None,
) -> SegmentResult:
    """Validate the lines in ``[start, end)`` of ``path``."""
    from .reader import read_raw_line  # the per-line reading rules live with the reader

    report = ValidationReport(max_kept=max_kept)
    checks = RunChecks(manifest)
    builder = LineIndexBuilder()
    views: list[EventView] = []
    line_issues: list[ValidationIssue] = []
    stats: dict[str, int] = {}

    def flush() -> None:
        issues = line_issues + check_event_chunk(views, report.aggregates) + checks.observe_raw(views)
        issues.sort(key=_line_order)
        report.add(issues)
        views.clear()
        line_issues.clear()

    position = 0
    with gc_paused():
        for line in iter_lines(path, start_offset=start, end_offset=end, progress=progress, stats=stats):
            builder.add(line)
            view, issues = read_raw_line(line, position)
            views.append(view)
            line_issues.extend(issues)
            position += 1
            if len(views) >= chunk_events:
                flush()
        flush()
    report.aggregates.events = position
    return SegmentResult(report, checks, builder.build(), stats.get("next_line", 1) - 1)


def scan_raw_trace(
    path: Path,
    manifest: Mapping[str, Any] | None,
    *,
    chunk_events: int,
    max_kept: int,
    progress: ProgressFn | None = None,
    workers: int | None = None,
) -> SegmentResult:
    """The whole file, split over ``workers`` processes (default: the usable cores)."""
    size = path.stat().st_size
    if workers is None:
        workers = _usable_cores() if size >= PARALLEL_MIN_BYTES else 1
    cuts = split_points(path, max(1, workers))
    if len(cuts) <= 2:
        return scan_segment(path, manifest, 0, None, chunk_events, max_kept, progress)
    return _scan_parallel(path, manifest, cuts, chunk_events, max_kept, progress)


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _child(
    conn: Any, counter: Any, path: Path, manifest: Any, start: int, end: int, chunk_events: int, max_kept: int
) -> None:
    def progress(done: int, _total: int) -> None:
        counter.value = done - start

    try:
        conn.send(scan_segment(path, manifest, start, end, chunk_events, max_kept, progress))
    except BaseException as exc:  # report, never hang the parent
        conn.send(exc)
    finally:
        conn.close()


def _scan_parallel(
    path: Path,
    manifest: Mapping[str, Any] | None,
    cuts: list[int],
    chunk_events: int,
    max_kept: int,
    progress: ProgressFn | None,
) -> SegmentResult:
    method = (
        "fork"
        if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
        else "spawn"
    )
    ctx: Any = multiprocessing.get_context(method)
    total = cuts[-1]
    children = []
    for start, end in itertools.pairwise(cuts[1:]):
        receiver, sender = ctx.Pipe(duplex=False)
        counter = ctx.Value("q", 0, lock=False)
        process = ctx.Process(
            target=_child,
            args=(sender, counter, path, dict(manifest or {}), start, end, chunk_events, max_kept),
            daemon=True,
        )
        process.start()
        sender.close()
        children.append((receiver, counter, process, start, end))

    def own_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(done + sum(int(c.value) for _, c, *_ in children), total)

    results = [scan_segment(path, manifest, 0, cuts[1], chunk_events, max_kept, own_progress)]
    for receiver, _counter, process, start, end in children:
        result: Any = None
        while result is None:
            if receiver.poll(0.1):
                try:
                    result = receiver.recv()
                except EOFError:
                    result = RuntimeError("worker exited")
            elif not process.is_alive() and not receiver.poll(0):
                result = RuntimeError("worker exited")
            own_progress(cuts[1], total)
        process.join()
        if not isinstance(result, SegmentResult):  # a lost worker: do its part here
            result = scan_segment(path, manifest, start, end, chunk_events, max_kept)
        results.append(result)
    return merge_segments(results, manifest, max_kept)


def merge_segments(
    results: list[SegmentResult], manifest: Mapping[str, Any] | None, max_kept: int
) -> SegmentResult:
    """One result for the whole file, in file order, with absolute line numbers."""
    report = ValidationReport(max_kept=max_kept)
    checks = RunChecks(manifest)
    offsets: list[int] = []
    line_offset = 0
    for part in results:
        offsets.append(line_offset)
        report.absorb(part.report, _shifted(line_offset))
        checks.absorb(part.checks, line_offset)
        line_offset += part.lines
    index = LineIndex.concat([part.index for part in results], offsets)
    return SegmentResult(report, checks, index, line_offset)


def _shifted(offset: int) -> Any:
    def shift(issue: ValidationIssue) -> ValidationIssue:
        if offset == 0 or issue.location.line is None:
            return issue
        return replace(issue, location=replace(issue.location, line=issue.location.line + offset))

    return shift


def _line_order(issue: ValidationIssue) -> tuple[int, int]:
    location = issue.location
    return (location.line or 0, -1 if location.layer_index is None else location.layer_index)
