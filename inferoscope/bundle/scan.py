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
import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..validation.bundle_checks import RunChecks
from ..validation.event_checks import check_event_chunk
from ..validation.issues import ValidationIssue
from ..validation.raw_event import EventView
from .lines import LineIndex, LineIndexBuilder, ProgressFn, iter_lines, split_points
from .pipe import can_fork, end_with_parent, receive, usable_cores
from .raw_lines import read_raw_line
from .report import ValidationReport

PARALLEL_MIN_BYTES = 32 * 1024 * 1024
OFFLOAD_MIN_BYTES = 4 * 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class SegmentJob:
    """One byte range of a raw trace to validate; pickled as is to a worker process."""

    path: Path
    manifest: dict[str, Any]
    start: int
    end: int | None
    chunk_events: int
    max_kept: int
    profile: str = "v0.1"  # the contract the lines follow (v0.2 lines are metadata only)
    series: bool = True  # keep the per-token series in the aggregates (``RunAggregates.series``)

    def part(self, start: int, end: int | None) -> SegmentJob:
        return replace(self, start=start, end=end)


def scan_segment(
    job: SegmentJob,
    progress: ProgressFn | None = None,
    on_event: Callable[[EventView, Any], None] | None = None,
) -> SegmentResult:
    """Validate the lines in ``[job.start, job.end)`` of ``job.path``.

    ``on_event(view, typed)`` sees every line as read: its view, and the typed event where the
    strict decode took the line whole (else None); export reads its columns from them.
    """
    path, start, end, chunk_events = job.path, job.start, job.end, job.chunk_events
    report = ValidationReport(max_kept=job.max_kept)
    report.aggregates.series = job.series
    checks = RunChecks(job.manifest)
    builder = LineIndexBuilder()
    views: list[EventView] = []
    line_issues: list[ValidationIssue] = []
    stats: dict[str, int] = {}

    reached = [start, end if end is not None else path.stat().st_size]  # bytes read, bytes in all

    def read(done: int, total: int) -> None:
        reached[:] = [max(reached[0], done), total]
        if progress is not None:
            progress(done, total)

    def flush() -> None:
        issues = line_issues + check_event_chunk(views, report.aggregates) + checks.observe_raw(views)
        issues.sort(key=_line_order)
        report.add(issues)
        views.clear()
        line_issues.clear()
        if progress is not None:  # also between blocks: a slow block still reports (and can be stopped)
            progress(reached[0], reached[1])

    position = 0
    with gc_paused():
        for line in iter_lines(path, start_offset=start, end_offset=end, progress=read, stats=stats):
            builder.add(line)
            locate = len(report.issues) < report.max_kept
            if on_event is None:
                view, issues = read_raw_line(line, position, locate=locate, profile=job.profile)
            else:
                typed: list[Any] = []
                view, issues = read_raw_line(
                    line, position, locate=locate, profile=job.profile, decoded=typed
                )
                on_event(view, typed[0] if typed else None)
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
    offload: bool = False,
    profile: str = "v0.1",
    series: bool = True,
) -> SegmentResult:
    """The whole file, split over ``workers`` processes (default: the usable cores).

    With ``offload`` every segment runs in a worker process and this one only waits, so a
    user interface running beside it in another thread stays responsive.
    """
    size = path.stat().st_size
    if workers is None:
        big = size >= PARALLEL_MIN_BYTES or (offload and size >= OFFLOAD_MIN_BYTES)
        workers = usable_cores() if big else 1
    job = SegmentJob(path, dict(manifest or {}), 0, None, chunk_events, max_kept, profile, series)
    cuts = split_points(path, max(1, workers))
    if len(cuts) <= 2 and not (offload and size >= OFFLOAD_MIN_BYTES):
        return scan_segment(job, progress)
    return _scan_parallel(job, cuts, progress, offload)


class _ForkedChild:
    """A segment validated in a forked copy of this (single-threaded) process."""

    def __init__(self, ctx: Any, job: SegmentJob) -> None:
        self.receiver, sender = ctx.Pipe(duplex=False)
        self.counter = ctx.Value("q", 0, lock=False)
        self.process = ctx.Process(target=_forked_main, args=(sender, self.counter, job), daemon=True)
        self.process.start()
        sender.close()
        self.outcome: Any = None

    @property
    def done(self) -> int:
        return int(self.counter.value)

    def wait(self, timeout: float) -> bool:
        if self.outcome is not None:
            return True
        if self.receiver.poll(timeout):
            try:
                self.outcome = self.receiver.recv()
            except EOFError:
                self.outcome = RuntimeError("worker exited")
        elif not self.process.is_alive() and not self.receiver.poll(0):
            self.outcome = RuntimeError("worker exited")
        if self.outcome is not None:
            self.process.join()
            self.receiver.close()
        return self.outcome is not None

    def stop(self) -> None:
        self.process.kill()
        self.receiver.close()


def _forked_main(conn: Any, counter: Any, job: SegmentJob) -> None:
    end_with_parent()

    def progress(done: int, _total: int) -> None:
        counter.value = done - job.start

    try:
        conn.send(scan_segment(job, progress))
    except BaseException as exc:  # report, never hang the parent
        conn.send(exc)
    finally:
        conn.close()


class _ProcessChild:
    """A segment validated by ``python -m inferoscope.bundle.worker`` (safe from threads)."""

    def __init__(self, job: SegmentJob) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inferoscope.bundle.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.process.stdin is not None
        try:
            pickle.dump(job, self.process.stdin)
            self.process.stdin.close()
        except OSError:
            pass  # a worker that died at once is reported by the reader thread
        self.done = 0
        self.outcome: Any = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            while True:
                kind, value = receive(self.process.stdout)
                if kind == "progress":
                    self.done = int(value)
                    continue
                self.outcome = value if kind == "result" else RuntimeError(str(value))
                break
        except Exception as exc:
            self.outcome = RuntimeError(f"worker failed: {exc}")
        finally:
            self.process.stdout.close()
            self.process.wait()

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def stop(self) -> None:
        self.process.kill()


def _scan_parallel(
    job: SegmentJob, cuts: list[int], progress: ProgressFn | None, offload: bool = False
) -> SegmentResult:
    ctx: Any = multiprocessing.get_context("fork") if can_fork() else None
    total = cuts[-1]
    parts = [job.part(start, end) for start, end in itertools.pairwise(cuts)]
    local = [] if offload else parts[:1]
    children: list[tuple[Any, SegmentJob]] = []
    for part in parts[len(local) :]:
        try:
            child: Any = _ForkedChild(ctx, part) if ctx is not None else _ProcessChild(part)
        except (OSError, ValueError, RuntimeError):
            # no worker can be started here: this process validates everything itself
            for started, _part in children:
                started.stop()
            return scan_segment(job, progress)
        children.append((child, part))

    local_done = 0

    def report_progress(done: int = 0, _total: int = 0) -> None:
        nonlocal local_done
        local_done = max(local_done, done)
        if progress is not None:
            progress(local_done + sum(child.done for child, _part in children), total)

    try:
        results = [scan_segment(part, report_progress) for part in local]
        for child, part in children:
            while not child.wait(0.1):
                report_progress()
            result = child.outcome
            if not isinstance(result, SegmentResult):  # a lost worker: do its part here
                result = scan_segment(part)
            results.append(result)
        report_progress()
    except BaseException:  # the caller gave up (its progress callback raised): no orphan workers
        for child, _part in children:
            child.stop()
        raise
    return merge_segments(results, job.manifest, job.max_kept)


def merge_segments(
    results: list[SegmentResult], manifest: Mapping[str, Any] | None, max_kept: int
) -> SegmentResult:
    """One result for the whole file, in file order, with absolute line numbers."""
    merger = SegmentMerger(manifest, max_kept)
    for part in results:
        merger.add(part)
    return merger.result()


class SegmentMerger:
    """Segments' results folded in file order as they come (a segment's aggregates are dropped
    once absorbed, so many small segments cost no more memory than two large ones)."""

    def __init__(self, manifest: Mapping[str, Any] | None, max_kept: int) -> None:
        self.report = ValidationReport(max_kept=max_kept)
        self.checks = RunChecks(manifest)
        self.indexes: list[LineIndex] = []
        self.offsets: list[int] = []
        self.lines = 0
        self.events = 0

    def add(self, part: SegmentResult) -> None:
        self.offsets.append(self.lines)
        self.report.absorb(part.report, _shifted(self.lines, self.events))
        self.checks.absorb(part.checks, self.lines)
        self.indexes.append(part.index)
        self.lines += part.lines
        self.events += part.report.aggregates.events

    def result(self) -> SegmentResult:
        return SegmentResult(
            self.report, self.checks, LineIndex.concat(self.indexes, self.offsets), self.lines
        )


_EVENT_NAME = re.compile(r"raw_events\[(\d+)\]")


def _shifted(offset: int, events: int = 0) -> Any:
    """Issues of a later segment, placed in the whole file: line numbers, and the event number in
    a schema message (``raw_events[3]`` of the segment is ``raw_events[events + 3]``)."""

    def shift(issue: ValidationIssue) -> ValidationIssue:
        if events and issue.message.startswith("raw_events["):
            number = _EVENT_NAME.match(issue.message)
            if number is not None:
                message = f"raw_events[{int(number.group(1)) + events}]{issue.message[number.end() :]}"
                issue = replace(issue, message=message)
        if offset == 0 or issue.location.line is None:
            return issue
        return replace(issue, location=replace(issue.location, line=issue.location.line + offset))

    return shift


def _line_order(issue: ValidationIssue) -> tuple[int, int]:
    location = issue.location
    return (location.line or 0, -1 if location.layer_index is None else location.layer_index)
