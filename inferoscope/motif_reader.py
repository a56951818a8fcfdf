"""The derived motif files read for views: derived.ndjson and motif_ledger.json, tolerant.

Derived payloads are free-form objects (contract §1: provisional), so every field is type-checked
and a missing or malformed one is left unknown, never guessed; a line that cannot be read is
counted, not fatal.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

MAX_LINE = 1 << 20
MAX_LEDGER = 64 << 20


@dataclass(slots=True, frozen=True)
class MotifMark:
    """One motif assignment: id, how well the token fitted it (None: not recorded), novelty."""

    motif_id: str
    fit: float | None
    novel: bool

    def colour(self, vocabulary: tuple[str, ...]) -> str:
        digits = re.search(r"(\d+)$", self.motif_id)
        number = int(digits.group(1)) if digits else zlib.crc32(self.motif_id.encode("utf-8", "replace"))
        return vocabulary[number % len(vocabulary)]


@dataclass(slots=True)
class TokenMotifs:
    global_motif: MotifMark | None
    layers: dict[int, MotifMark]
    raw: bytes


@dataclass(slots=True)
class MotifIndex:
    """Every token's motifs, plus what the ledger says about the matcher and motif sizes."""

    config_id: str = "?"
    threshold: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    by_token: dict[int, TokenMotifs] = field(default_factory=dict)
    unreadable_lines: int = 0

    def strength(self, mark: MotifMark) -> float:
        """How confidently to draw ``mark``: 1 for a perfect fit, fading to a ghost at the threshold.

        Unknown fits are drawn weak: a motif without a fit must not look like a confident one.
        """
        if mark.fit is None:
            return 0.3
        floor = self.threshold if self.threshold is not None and self.threshold < 1 else 0.0
        share = (mark.fit - floor) / (1.0 - floor) if mark.fit < 1.0 else 1.0
        return max(0.2, min(1.0, 0.2 + 0.8 * share))


def _mark(value: Any) -> MotifMark | None:
    if not isinstance(value, dict) or not isinstance(value.get("motif_id"), str):
        return None
    return MotifMark(value["motif_id"], _finite(value.get("fit")), value.get("novel") is True)


def _finite(value: Any) -> float | None:
    """A finite float from a JSON number, or None (not a number, or past any float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def read_motifs(run_dir: Path) -> MotifIndex | None:
    """The bundle's derived motifs, or None when it has no derived.ndjson."""
    path = run_dir / "derived.ndjson"
    if not path.is_file():
        return None
    index = MotifIndex()
    _read_ledger(run_dir / "motif_ledger.json", index)
    decoder = msgspec.json.Decoder()
    try:
        handle = path.open("rb")
    except OSError:
        return None
    with handle:
        for raw in handle:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if len(line) > MAX_LINE:
                index.unreadable_lines += 1
                continue
            try:
                event = decoder.decode(line)
            except (msgspec.DecodeError, RecursionError):
                index.unreadable_lines += 1
                continue
            token = event.get("token_index") if isinstance(event, dict) else None
            payload = event.get("derived_payload") if isinstance(event, dict) else None
            if not isinstance(token, int) or isinstance(token, bool) or not isinstance(payload, dict):
                index.unreadable_lines += 1
                continue
            layers: dict[int, MotifMark] = {}
            entries = payload.get("layer_motifs")
            for entry in entries if isinstance(entries, list) else []:
                mark = _mark(entry)
                if mark is not None and isinstance(entry.get("layer_index"), int):
                    layers[entry["layer_index"]] = mark
            index.by_token[token] = TokenMotifs(_mark(payload.get("global_motif")), layers, line)
    return index


def _read_ledger(path: Path, index: MotifIndex) -> None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_LEDGER:
            return
        ledger = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError, RecursionError):
        return
    if not isinstance(ledger, dict):
        return
    config = ledger.get("derivation_config_id")
    index.config_id = config if isinstance(config, str) else "?"
    payload = ledger.get("ledger_payload")
    if not isinstance(payload, dict):
        return
    threshold = _finite(payload.get("threshold"))
    if threshold is not None:
        index.threshold = threshold
    for key in ("global_motif_counts", "layer_motif_counts"):
        counts = payload.get(key)
        if isinstance(counts, dict):
            index.counts.update(
                {k: v for k, v in counts.items() if isinstance(k, str) and isinstance(v, int)}
            )
