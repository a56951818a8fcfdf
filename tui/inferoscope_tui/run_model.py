"""The run as the app sees it: events on demand, token texts, issues by place, grid order.

No Textual here: the app is a view of this object, which makes replay deterministic and
testable without a terminal. Only the core's public API is used.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from inferoscope import LayerEvent, RunReader, TokenEvent, ValidationIssue, ValidationReport

from .motifs import MotifIndex, TokenMotifs, load_motifs
from .run_overview import LayerOverview, overview_of

_CACHE_EVENTS = 64


class _TokenOnly(msgspec.Struct):
    """Decodes just the text of a raw event, skipping its numbers' values."""

    token_text: str = ""
    token_index: int = -1


_TOKEN_DECODER = msgspec.json.Decoder(_TokenOnly)


@dataclass(slots=True)
class EventSlot:
    """Event ``position`` of the raw trace: a TokenEvent, or unreadable with the reason."""

    position: int
    token: TokenEvent | None
    error: str | None = None
    raw: bytes = b""

    @property
    def token_text(self) -> str | None:
        return None if self.token is None else self.token.token_text

    def layers(self) -> tuple[LayerEvent, ...]:
        return () if self.token is None else self.token.layers

    def layer(self, layer_index: int | None) -> LayerEvent | None:
        if self.token is None or layer_index is None:
            return None
        return self.token.layer(layer_index)


@dataclass(slots=True)
class IssueIndex:
    """Issues placed by event position, layer and expert (for marking and jumping)."""

    issues: list[ValidationIssue] = field(default_factory=list)
    by_position: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    layout_layers: set[int] = field(default_factory=set)

    def positions(self) -> list[int]:
        return sorted(self.by_position)

    def at(self, position: int) -> list[ValidationIssue]:
        return [self.issues[i] for i in self.by_position.get(position, [])]


class RunModel:
    """A bundle opened for replay; every step costs one line read, whatever the run length."""

    def __init__(self, run_dir: Path | str) -> None:
        self.reader = RunReader(run_dir)  # BundleOpenError propagates: the app shows it
        self.reader.offload = True  # validate in worker processes: the UI thread stays free
        self.run_dir = Path(run_dir)
        self._cache: OrderedDict[int, EventSlot] = OrderedDict()
        self.token_texts: list[str | None] | None = None
        self.report: ValidationReport | None = None
        self.issue_index = IssueIndex()
        self._count: int | None = None
        self.grid_orders = self._grid_orders()
        self.overview: dict[int, LayerOverview] | None = None  # after validation
        self.motifs: MotifIndex | None = None  # provisional, from derived.ndjson when present

    # -- facts ---------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return self.reader.manifest or {}

    def field(self, key: str) -> str:
        value = self.manifest.get(key)
        return value if isinstance(value, str) else "?"

    @property
    def prompt_text(self) -> str:
        prompt = self.manifest.get("prompt")
        text = prompt.get("text") if isinstance(prompt, dict) else None
        return text if isinstance(text, str) else ""

    @property
    def fatal_problem(self) -> str | None:
        """Why nothing can be replayed (no raw trace), or None."""
        problem = self.reader.raw_problem
        return problem.message if problem is not None else None

    # -- counting and reading -------------------------------------------------------------
    @property
    def count_known(self) -> bool:
        return self._count is not None

    def build_index(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Find every event (run in a worker thread); returns the count."""
        self._count = 0 if self.fatal_problem else len(self.reader.build_index(progress))
        return self._count

    @property
    def count(self) -> int:
        return self._count if self._count is not None else (1 if self.has_first_event() else 0)

    def has_first_event(self) -> bool:
        if self.fatal_problem:
            return False
        try:
            self.reader.raw_line(0)
        except (IndexError, OSError):
            return False
        return True

    def slot(self, position: int) -> EventSlot:
        """Event ``position``, parsed once and kept in a small LRU cache."""
        cached = self._cache.get(position)
        if cached is not None:
            self._cache.move_to_end(position)
            return cached
        try:
            raw = self.reader.raw_line(position)
        except (IndexError, OSError) as exc:
            slot = EventSlot(position, None, f"cannot read event {position}: {exc}")
        else:
            token = self.reader.token_event(position)
            if token.readable:
                slot = EventSlot(position, token, raw=raw)
            else:
                slot = EventSlot(position, None, token.problem, raw=raw)
        self._cache[position] = slot
        if len(self._cache) > _CACHE_EVENTS:
            self._cache.popitem(last=False)
        return slot

    def token_text(self, position: int) -> str | None:
        """The text of event ``position`` (None when unreadable), cheaply."""
        if self.token_texts is not None and 0 <= position < len(self.token_texts):
            return self.token_texts[position]
        return self.slot(position).token_text

    def quick_text(self, position: int) -> str | None:
        """The text of event ``position`` decoding only that field (lists of many tokens)."""
        if self.token_texts is not None and 0 <= position < len(self.token_texts):
            return self.token_texts[position]
        cached = self._cache.get(position)
        if cached is not None:
            return cached.token_text
        try:
            return _TOKEN_DECODER.decode(self.reader.raw_line(position)).token_text
        except (msgspec.DecodeError, msgspec.ValidationError, OSError, IndexError):
            return None

    def load_token_texts(self) -> list[str | None]:
        """Every token's text, decoding only that field (worker thread; for search)."""
        texts: list[str | None] = []
        for position in range(self.count):
            try:
                texts.append(_TOKEN_DECODER.decode(self.reader.raw_line(position)).token_text)
            except (msgspec.DecodeError, msgspec.ValidationError, OSError, IndexError):
                texts.append(None)
        self.token_texts = texts
        return texts

    def load_motifs(self) -> MotifIndex | None:
        """Read the derived motifs (worker thread); None when the bundle has none."""
        self.motifs = load_motifs(self.run_dir)
        return self.motifs

    def motifs_at(self, position: int) -> TokenMotifs | None:
        """The motifs of event ``position`` (matched by its token_index)."""
        if self.motifs is None:
            return None
        cached = self._cache.get(position)
        token = cached.token.token_index if cached is not None and cached.token is not None else None
        return self.motifs.by_token.get(position if token is None else token)

    # -- validation -----------------------------------------------------------------------
    def validate(self, progress: Callable[[int, int], None] | None = None) -> ValidationReport:
        """Every issue (worker thread), placed by event for the views."""
        report = self.reader.validate(progress)
        index = IssueIndex(issues=list(report.issues))
        lines = self.reader.build_index().numbers if self.count_known else None
        for number, issue in enumerate(index.issues):
            position = self._position_of(issue, lines)
            if position is not None:
                index.by_position[position].append(number)
            elif issue.location.file == "layout.json" and issue.location.layer_index is not None:
                index.layout_layers.add(issue.location.layer_index)
        self.report, self.issue_index = report, index
        self.overview = overview_of(report)
        return report

    def _position_of(self, issue: ValidationIssue, lines: Any) -> int | None:
        location = issue.location
        if location.file != "raw_trace.ndjson" or location.line is None or lines is None:
            return None
        import numpy as np

        position = int(np.searchsorted(lines, location.line))
        if position < len(lines) and int(lines[position]) == location.line:
            return position
        return None

    # -- layout ---------------------------------------------------------------------------
    def _grid_orders(self) -> dict[int, list[int]]:
        """Per layer, experts in layout reading order (y, then x); the layout is never reordered."""
        orders: dict[int, list[int]] = {}
        layers = (self.reader.layout or {}).get("layers")
        for layer in layers if isinstance(layers, list) else []:
            if not isinstance(layer, dict) or not isinstance(layer.get("layer_index"), int):
                continue
            found = layer.get("positions")
            positions = [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []
            try:
                ordered = sorted(positions, key=lambda p: (float(p.get("y", 0)), float(p.get("x", 0))))
                orders.setdefault(layer["layer_index"], [int(p["expert_index"]) for p in ordered])
            except (TypeError, ValueError, KeyError, OverflowError):
                continue  # a layout the contract refuses: the layer is drawn in index order
        return orders
