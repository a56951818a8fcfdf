"""The indexed reader: open a bundle of any size at once, read event i on demand, and
validate the whole run as a stream in bounded memory.

Opening reads only manifest.json and layout.json. The byte-offset index of
raw_trace.ndjson (24 bytes an event) is built on first need, or during ``validate()``,
which reads the file once in blocks, checks every event (typed decode, then vectorised
semantic checks per chunk) and gathers the run-level aggregates in the same pass.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..events import LayerEvent, TokenEvent, from_v01, meta_fields, unreadable
from ..jsonfmt import JSONParseError, parse_json_bytes
from ..routing import Routing, routing_of
from ..validation.bundle_checks import RunChecks, manifest_semantic_issues
from ..validation.issues import Location, ValidationIssue
from ..validation.layout_struct import layout_conforms
from ..validation.schema import schema_issues
from ..versions import (
    CONTINGENCY_FILE,
    DERIVED_FILE,
    LAYOUT_FILE,
    MANIFEST_FILE,
    MANIFEST_V02_SCHEMA_VERSION,
    MOTIF_LEDGER_FILE,
    RAW_TRACE_FILE,
)
from .files import file_problem, parse_line, read_json_object
from .lines import MAX_LINE_BYTES, Line, LineIndex, LineIndexBuilder, ProgressFn, count_lines, iter_lines
from .meta_fast import fast_meta_scan
from .raw_lines import too_long
from .report import DEFAULT_MAX_KEPT_ISSUES, ValidationReport
from .scan import SegmentResult, scan_raw_trace
from .sidecar import Sidecar
from .v02_validate import routing_issues, row_count_issues, validate_arrays

DEFAULT_CHUNK_EVENTS = 128

Stage = Callable[[str], None]


class BundleOpenError(Exception):
    """The path cannot be read as a bundle at all (not a directory, nothing in it)."""


class EventReadError(ValueError):
    """One raw event could not be read; the message names file, line and token."""


class RunReader:
    """A run bundle opened for reading; nothing but the small JSON files is loaded."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        try:
            if not self.run_dir.exists():
                raise BundleOpenError(f"{self.run_dir}: no such directory")
            if not self.run_dir.is_dir():
                raise BundleOpenError(f"{self.run_dir}: not a directory")
            names = {MANIFEST_FILE, RAW_TRACE_FILE, LAYOUT_FILE}
            if not any((self.run_dir / name).exists() for name in names):
                raise BundleOpenError(
                    f"{self.run_dir}: not a run bundle (no manifest.json, raw_trace.ndjson or layout.json)"
                )
        except PermissionError:
            raise BundleOpenError(f"{self.run_dir}: permission denied") from None
        self.raw_path = self.run_dir / RAW_TRACE_FILE
        self.manifest, self.manifest_issues = read_json_object(
            self.run_dir / MANIFEST_FILE, "manifest", required=True
        )
        self.layout, self.layout_issues = read_json_object(
            self.run_dir / LAYOUT_FILE, "layout", required=True
        )
        self.raw_problem = file_problem(self.raw_path, "run_bundle", required=True)
        #: the contract the bundle follows: "v0.1" (routing in the NDJSON) or "v0.2" (array files)
        self.profile = profile_of(self.manifest, self.raw_path if self.raw_problem is None else None)
        self.routing: Routing | None = routing_of(self.manifest) if self.profile == "v0.2" else None
        self._sidecar: Sidecar | None = None
        self._biases: dict[str, np.ndarray | None] = {}
        self._index: LineIndex | None = None
        self.workers: int | None = None  # processes for validate(); None: one per core for big files
        #: validate() in worker processes only, keeping this process free (for an interactive app)
        self.offload = False

    # -- random access ---------------------------------------------------------------------
    @property
    def index_ready(self) -> bool:
        return self._index is not None

    def build_index(self, progress: ProgressFn | None = None) -> LineIndex:
        """Find every event's byte range (no parsing); reused by later calls."""
        if self._index is None:
            builder = LineIndexBuilder()
            if self.raw_problem is None:
                for line in iter_lines(self.raw_path, progress=progress):
                    builder.add(line)
            self._index = builder.build()
        return self._index

    def __len__(self) -> int:
        return len(self.build_index())

    def count(self) -> int:
        """How many events ``len`` gives, without building the index where it is not built yet
        (the lines counted a chunk at a time: 0.1 s against 1.1 s at 500,000 v0.2 tokens), for a
        caller that then reads the trace in order."""
        return len(self) if self.index_ready else count_lines(self.raw_path)

    def line_number(self, i: int) -> int:
        return int(self.build_index().numbers[i])

    def raw_line(self, i: int) -> bytes:
        """The bytes of event ``i`` exactly as stored (without the newline)."""
        if i == 0 and self._index is None:
            line = self._first_line()
            if line is None:
                raise IndexError("event 0 out of range: the raw trace has no events")
            return bytes(line.data or b"")
        index = self.build_index()
        if not 0 <= i < len(index):
            raise IndexError(f"event {i} out of range: the raw trace has {len(index)} events")
        start, end = int(index.starts[i]), int(index.ends[i])
        fd = os.open(self.raw_path, os.O_RDONLY)
        try:
            return os.pread(fd, end - start, start)
        finally:
            os.close(fd)

    def raw_lines(self, start: int, stop: int) -> list[bytes]:
        """The bytes of events ``start .. stop - 1`` as stored, read in one go (a block of
        token lines costs one read, not one per token)."""
        index = self.build_index()
        stop = min(stop, len(index))
        if stop <= start:
            return []
        base = int(index.starts[start])
        with self.raw_path.open("rb") as handle:
            handle.seek(base)
            data = handle.read(int(index.ends[stop - 1]) - base)
        starts, ends = index.starts[start:stop] - base, index.ends[start:stop] - base
        return [data[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]

    def _first_line(self) -> Line | None:
        """The first non-blank line, reading at most about two line caps (a 20 GB single-line
        file answers at once, with a line too long to read, instead of being read to its end)."""
        if self.raw_problem is not None:
            return None
        limit = 2 * MAX_LINE_BYTES
        with self.raw_path.open("rb") as handle:
            head = handle.read(limit + 1)
        offset, number = 0, 1
        while offset < len(head):
            newline = head.find(b"\n", offset)
            if newline < 0:
                if len(head) > limit:  # no line end within the cap: too long to read
                    return Line(number, offset, len(head), None)
                newline = len(head)  # the last line, without a newline
            data = head[offset:newline]
            if data.strip(b" \t\r"):
                return Line(number, offset, newline, data if len(data) <= MAX_LINE_BYTES else None)
            offset, number = newline + 1, number + 1
        return None

    def event(self, i: int) -> dict[str, Any]:
        """Event ``i`` parsed (not validated); EventReadError names where it is unreadable."""
        data = self.raw_line(i)
        line = self.line_number(i) if self._index is not None else 1
        try:
            obj = parse_json_bytes(data)
        except JSONParseError as exc:
            raise EventReadError(f"{RAW_TRACE_FILE} line {line} (event {i}): {exc}") from None
        if not isinstance(obj, dict):
            raise EventReadError(f"{RAW_TRACE_FILE} line {line} (event {i}): not a JSON object")
        return obj

    def sidecar(self) -> Sidecar:
        """The v0.2 array files, opened once (ValueError for a v0.1.0 bundle or unusable routing)."""
        if self.routing is None:
            raise ValueError(f"{self.run_dir}: no usable contract v0.2 routing declaration")
        if self._sidecar is None:
            declared = self.manifest.get("arrays") if self.manifest is not None else None
            self._sidecar = Sidecar(
                self.run_dir, self.routing, declared if isinstance(declared, dict) else {}
            )
        return self._sidecar

    def token_event(self, i: int) -> TokenEvent:
        """Event ``i`` as a typed TokenEvent from either contract; never raises for bad content
        (an unreadable part carries its ``problem``); IndexError when ``i`` is out of range."""
        try:
            data = self.raw_line(i)
        except OSError as exc:
            return unreadable(i, f"cannot read event {i}: {exc}")
        line = self.line_number(i) if self._index is not None else 1
        try:
            obj = parse_json_bytes(data)
        except JSONParseError as exc:
            return unreadable(i, f"{RAW_TRACE_FILE} line {line} (event {i}): {exc}")
        if not isinstance(obj, dict):
            return unreadable(i, f"{RAW_TRACE_FILE} line {line} (event {i}): not a JSON object")
        if self.profile != "v0.2":
            return from_v01(i, obj)
        return TokenEvent(i, layers=self._v02_layers(i), profile="v0.2", **meta_fields(obj))

    def _v02_layers(self, i: int) -> tuple[LayerEvent, ...]:
        if self.routing is None:
            return ()
        sidecar = self.sidecar()
        layers: list[LayerEvent] = []
        for group in self.routing.groups:
            if group.name not in self._biases:
                self._biases[group.name] = sidecar.whole(group, "bias") if group.selection.bias else None
            biases = self._biases[group.name]
            found: dict[str, np.ndarray | None] = {}
            problem = None
            for role in ("selected", "weights", "scores"):
                relpath = group.arrays.get(role)
                if relpath is None:
                    found[role] = None
                    continue
                file = sidecar.files.get(relpath)
                if file is None:
                    problem = f"{relpath}: {sidecar.problems.get(relpath, 'unusable')}"
                    found[role] = None
                    continue
                try:
                    rows = file.read(i, i + 1)
                except OSError as exc:
                    problem, rows = str(exc), None
                found[role] = rows[0] if rows is not None and len(rows) else None
                if found[role] is None and problem is None:
                    problem = f"{relpath} has no row {i}"
            for slot, layer_index in enumerate(group.layers):
                picks = found["selected"]
                weights, scores = found["weights"], found["scores"]
                layers.append(
                    LayerEvent(
                        layer_index=layer_index,
                        num_experts=group.num_experts,
                        selected=() if picks is None else tuple(int(e) for e in picks[slot]),
                        weights=None if weights is None else weights[slot].astype(np.float64),
                        scores=None if scores is None else scores[slot],
                        score_function=group.score_function,
                        problem=problem,
                        site=group.site,
                        bias=None
                        if biases is None or slot >= len(biases)
                        else biases[slot].astype(np.float64),
                        shared_experts=group.shared_experts,
                    )
                )
        layers.sort(key=lambda la: la.layer_index if la.layer_index is not None else -1)
        return tuple(layers)

    # -- validation ------------------------------------------------------------------------
    def validate(
        self,
        progress: ProgressFn | None = None,
        *,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
        max_kept: int = DEFAULT_MAX_KEPT_ISSUES,
        derived: bool = True,
        raw_result: SegmentResult | None = None,
        series: bool = True,
    ) -> ValidationReport:
        """Every issue of the bundle, with aggregates; never raises for bad content.

        ``derived=False`` leaves the three derived artifacts out (derive, about to replace them,
        checks only what it derives from, so it can repair a half-derived bundle).
        ``raw_result``: the raw trace's pass already made (export reads the trace once, checking
        it as it writes); everything else is checked here as always. ``series=False``: the
        aggregates keep no per-token series (a check whose aggregates only count; memory flat).
        """
        report = ValidationReport(max_kept=max_kept)
        report.aggregates.series = series
        report.add(self.manifest_issues)
        if self.manifest is not None:
            report.add(
                schema_issues(
                    self.manifest,
                    "manifest_v02" if self.profile == "v0.2" else "manifest",
                    name="manifest",
                    scope="manifest",
                    location=Location(file=MANIFEST_FILE),
                )
            )
            report.add(manifest_semantic_issues(self.manifest))
        checks = RunChecks(self.manifest)
        report.add(self.layout_issues)
        if self.layout is not None and not layout_conforms(self.layout):
            report.add(
                schema_issues(
                    self.layout, "layout", name="layout", scope="layout", location=Location(file=LAYOUT_FILE)
                )
            )
        v02 = self.profile == "v0.2" and self.manifest is not None and self.routing is not None
        array_issues: list[ValidationIssue] = []
        array_overflow: Counter[str] = Counter()
        fast: SegmentResult | None = None
        if v02:  # the array files are checked while the token lines are read beside them
            assert self.manifest is not None and self.routing is not None
            with ThreadPoolExecutor(max_workers=1) as side:
                pending = (
                    side.submit(fast_meta_scan, self.raw_path, self.manifest, report.max_kept)
                    if self.raw_problem is None
                    else None
                )
                validate_arrays(
                    self.sidecar(),
                    self.manifest,
                    self.routing,
                    report.aggregates,
                    array_issues.extend,
                    array_overflow.update,
                )
                fast = pending.result() if pending is not None else None
        if self.raw_problem is not None:
            report.add([self.raw_problem])
        else:
            self._scan_raw(report, checks, progress, chunk_events, fast or raw_result)
        report.add(checks.finish_raw())
        if v02:
            assert self.manifest is not None and self.routing is not None
            report.add(routing_issues(self.manifest, self.routing))
            for group in self.routing.groups:
                for layer in group.layers:
                    checks.layer_experts.setdefault(layer, (group.num_experts, None))
                    checks.layer_first_line.setdefault(layer, None)
            report.add(row_count_issues(self.sidecar(), self.manifest, int(checks.raw_token_indices().size)))
            report.add(array_issues)
            report.count_more(array_overflow)
        if self.layout is not None:
            report.add(checks.check_layout(self.layout))
        if not derived:
            return report
        self._scan_derived(report, checks)
        for artifact, file in (("motif_ledger", MOTIF_LEDGER_FILE), ("contingency", CONTINGENCY_FILE)):
            obj, issues = read_json_object(self.run_dir / file, artifact, required=False)
            report.add(issues)
            if obj is not None:
                report.add(
                    schema_issues(obj, artifact, name=artifact, scope=artifact, location=Location(file=file))
                )
                report.add(checks.check_provisional_object(artifact, obj))
        return report

    def _scan_raw(
        self,
        report: ValidationReport,
        checks: RunChecks,
        progress: ProgressFn | None,
        chunk_events: int,
        fast: SegmentResult | None = None,
    ) -> None:
        if fast is not None and progress is not None:
            size = self.raw_path.stat().st_size
            progress(size, size)
        result = fast or scan_raw_trace(
            self.raw_path,
            self.manifest,
            chunk_events=chunk_events,
            max_kept=report.max_kept,
            progress=progress,
            workers=self.workers,
            offload=self.offload,
            profile=self.profile,
            series=report.aggregates.series,
        )
        report.absorb(result.report, lambda issue: issue)
        checks.absorb(result.checks, 0)
        if self._index is None:
            self._index = result.index

    def _scan_derived(self, report: ValidationReport, checks: RunChecks) -> None:
        path = self.run_dir / DERIVED_FILE
        problem = file_problem(path, "derived_event", required=False)
        if problem is not None:
            report.add([problem])
            return
        if not path.exists():
            return
        chunk: list[tuple[int | None, Any]] = []
        for position, line in enumerate(iter_lines(path)):
            if line.data is None:
                report.add([too_long(DERIVED_FILE, line, "derived_event", None)])
                continue
            obj, issues = parse_line(line.data, DERIVED_FILE, line.number, "derived_event", None)
            report.add(issues)
            if obj is None:
                continue
            report.add(
                schema_issues(
                    obj,
                    "derived_event",
                    name=f"derived_events[{position}]",
                    scope="derived_event",
                    location=Location(file=DERIVED_FILE, line=line.number),
                )
            )
            chunk.append((line.number, obj))
            if len(chunk) >= 4096:
                report.add(checks.check_derived_events(chunk))
                chunk = []
        report.add(checks.check_derived_events(chunk))


MANIFEST_V02 = MANIFEST_V02_SCHEMA_VERSION


def profile_of(manifest: dict[str, Any] | None, raw_path: Path | None) -> str:
    """ "v0.2" for a manifest/v0.2.0 bundle (or, without a usable manifest, v0.2 raw lines), else "v0.1"."""
    if isinstance(manifest, dict) and "schema_version" in manifest:
        return "v0.2" if manifest.get("schema_version") == MANIFEST_V02 else "v0.1"
    if raw_path is not None:
        try:
            with raw_path.open("rb") as handle:
                head = handle.read(4096)
        except OSError:
            return "v0.1"
        if b'"raw/v0.2.0"' in head.split(b"\n", 1)[0]:
            return "v0.2"
    return "v0.1"
