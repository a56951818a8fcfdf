"""Documents for teacher-forced routing, read from a text file or a JSONL file, checked first.

``--text FILE``: documents are separated by blank lines (a file without blank lines is one
document). ``--jsonl FILE``: one JSON object per line; ``field`` holds the text and
``source_field`` (optional) a label such as the domain. The whole file is checked in one
streaming pass before anything is routed, so a bad line is reported (file, line, what is wrong)
before a single bundle is written; the documents are then read again, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .jsonfmt import JSONParseError, parse_json_bytes
from .textsafe import visible


class CorpusError(ValueError):
    """The corpus file cannot be used as given; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    path: Path
    kind: str  # "text" or "jsonl"
    field: str = "text"
    source_field: str | None = None
    source: str | None = None  # a label for every document of a text file


def check_corpus(spec: CorpusSpec) -> int:
    """The number of documents; CorpusError at the first unusable line."""
    return sum(1 for _ in _read(spec))


def documents(spec: CorpusSpec) -> Iterator[tuple[int, str, str | None]]:
    """(index, text, source) for each document, streamed."""
    yield from _read(spec)


def _read(spec: CorpusSpec) -> Iterator[tuple[int, str, str | None]]:
    if not spec.path.is_file():
        raise CorpusError(f"{spec.path}: no such file")
    if spec.kind == "text":
        yield from _paragraphs(spec)
    elif spec.kind == "jsonl":
        yield from _jsonl(spec)
    else:
        raise CorpusError(f"unknown corpus kind {spec.kind!r}")


def _paragraphs(spec: CorpusSpec) -> Iterator[tuple[int, str, str | None]]:
    index, lines = 0, []
    with spec.path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{spec.path} line {number}: not UTF-8 text") from None
            if line.strip():
                lines.append(line)
                continue
            if lines:
                yield index, "".join(lines).rstrip("\n"), spec.source
                index, lines = index + 1, []
    if lines:
        yield index, "".join(lines).rstrip("\n"), spec.source


def _jsonl(spec: CorpusSpec) -> Iterator[tuple[int, str, str | None]]:
    index = 0
    with spec.path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{spec.path} line {number}"
            try:
                obj = parse_json_bytes(raw.rstrip(b"\r\n"))
            except JSONParseError as exc:
                raise CorpusError(f"{where}: {exc}") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{where}: not a JSON object ({_kind(obj)})")
            text = obj.get(spec.field)
            if not isinstance(text, str):
                raise CorpusError(f"{where}: {_field_problem(obj, spec.field, 'field')}")
            source = None
            if spec.source_field is not None:
                value = obj.get(spec.source_field)
                if not isinstance(value, str):
                    raise CorpusError(f"{where}: {_field_problem(obj, spec.source_field, 'source field')}")
                source = value
            yield index, text, source
            index += 1


def _kind(value: object) -> str:
    """A JSON value's kind in words (``an integer``, ``a list``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {int: "an integer", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _field_problem(obj: dict[str, object], name: str, what: str) -> str:
    label = f"{what} {visible(name, 40)!r}"
    if name not in obj:
        return f"has no {label}"
    return f"{label} is {_kind(obj[name])}, not text"
