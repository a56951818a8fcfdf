"""A JSON file written a piece at a time, in the bytes ``dumps_json_file`` gives the same object.

Large derived artifacts (a structureless run's motif ledger names every motif it founded: 8
million at 500,000 tokens of an OLMoE-shaped run) would otherwise be built as dictionaries of
millions of entries and then as one string. Here an object may hold ``Streamed`` members: their
entries are produced in key order when written, so only one entry is in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_encode_string = json.encoder.encode_basestring_ascii
INDENT = "  "


@dataclass(frozen=True, slots=True)
class Streamed:
    """A JSON object whose ``(key, value)`` entries ``entries()`` yields in sorted key order."""

    entries: Callable[[], Iterator[tuple[str, Any]]]

    def sample(self, count: int = 3) -> dict[str, Any]:
        """The first ``count`` entries, as a dictionary (to check the shape against a schema)."""
        out: dict[str, Any] = {}
        for key, value in self.entries():
            if len(out) >= count:
                break
            out[key] = value
        return out

    def whole(self) -> dict[str, Any]:
        return dict(self.entries())


def materialised(obj: Any) -> Any:
    """``obj`` with every Streamed member made a dictionary (for callers that want objects)."""
    if isinstance(obj, Streamed):
        return {key: materialised(value) for key, value in obj.entries()}
    if isinstance(obj, Mapping):
        return {key: materialised(value) for key, value in obj.items()}
    return obj


def sampled(obj: Any, count: int = 3) -> Any:
    """``obj`` with every Streamed member cut to its first entries."""
    if isinstance(obj, Streamed):
        return {key: sampled(value, count) for key, value in obj.sample(count).items()}
    if isinstance(obj, Mapping):
        return {key: sampled(value, count) for key, value in obj.items()}
    return obj


def write_json_file(obj: Any, write: Callable[[str], Any]) -> None:
    """``json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\\n"``,
    given to ``write`` a piece at a time."""
    _value(obj, 0, write)
    write("\n")


def _value(obj: Any, level: int, write: Callable[[str], Any]) -> None:
    if isinstance(obj, Streamed):
        _entries(obj.entries(), level, write)
    elif isinstance(obj, Mapping):
        _entries(iter(sorted(obj.items())), level, write)
    elif isinstance(obj, (list, tuple)):
        _items(obj, level, write)
    else:
        write(_scalar(obj))


def _entries(entries: Iterator[tuple[str, Any]], level: int, write: Callable[[str], Any]) -> None:
    first = next(entries, None)
    if first is None:
        write("{}")
        return
    inner = "\n" + INDENT * (level + 1)
    write("{")
    for position, (key, value) in enumerate(_chain(first, entries)):
        write(("," if position else "") + inner + _encode_string(key) + ": ")
        _value(value, level + 1, write)
    write("\n" + INDENT * level + "}")


def _items(items: Iterable[Any], level: int, write: Callable[[str], Any]) -> None:
    values = list(items)
    if not values:
        write("[]")
        return
    inner = "\n" + INDENT * (level + 1)
    if all(type(v) in (int, float, str) for v in values):  # a row of numbers: one write
        write("[" + inner + ("," + inner).join(map(_scalar, values)) + "\n" + INDENT * level + "]")
        return
    write("[")
    for position, value in enumerate(values):
        write(("," if position else "") + inner)
        _value(value, level + 1, write)
    write("\n" + INDENT * level + "]")


def _chain(first: tuple[str, Any], rest: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    yield first
    yield from rest


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return _encode_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("Out of range float values are not JSON compliant")
        return float.__repr__(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
