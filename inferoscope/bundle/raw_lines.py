"""One raw-trace line read into an EventView plus its issues: typed decode first, the
reference schema only for lines the typed decode refuses (contract v0.1.0 and v0.2)."""

from __future__ import annotations

from typing import Any

from ..jsonfmt import DECODE_FAILURES
from ..validation.issues import Location, ValidationIssue
from ..validation.raw_event import (
    LENIENT_DECODER,
    RAW_EVENT_DECODER,
    TOKEN_META_DECODER,
    EventView,
    unknown_key_problems,
    view_of_dict,
    view_of_meta,
    view_of_struct,
)
from ..validation.schema import Problem, issues_of, schema_problems
from ..versions import RAW_TRACE_FILE
from .files import JSON_PARSE_ERROR, parse_line
from .lines import MAX_LINE_BYTES, Line

#: profile -> the schema artifact its raw lines follow
RAW_SCHEMA = {"v0.1": "raw_event", "v0.2": "raw_event_v02"}


def read_raw_line(
    line: Line, position: int, locate: bool = True, profile: str = "v0.1", decoded: list[Any] | None = None
) -> tuple[EventView, list[ValidationIssue]]:
    """One raw line as an EventView plus its parse and schema issues (typed path first).

    ``profile`` is the bundle's contract: ``v0.1`` (routing inside the line) or ``v0.2``
    (per-token metadata only; the routing is in the array files).

    ``locate=False`` (the report keeps no more issues, it only counts them) lets a repeated
    line's schema issues come back as shared, unlocated copies: counted, never shown.

    ``decoded``, when given, receives the typed event of a v0.1.0 line the strict decode took
    whole (nothing for any other line), for a pass that reads more than the checks need.
    """
    if line.data is None:
        return _unreadable(line, position), [too_long(RAW_TRACE_FILE, line, "raw_event", None)]
    if profile == "v0.2":
        try:
            meta = TOKEN_META_DECODER.decode(line.data)
        except DECODE_FAILURES:
            pass
        else:
            return view_of_meta(meta, position, line.number), []
        return _reference(line, position, locate, RAW_SCHEMA[profile])
    try:
        event = RAW_EVENT_DECODER.decode(line.data)
    except DECODE_FAILURES:
        pass
    else:
        if decoded is not None:
            decoded.append(event)
        return view_of_struct(event, position, line.number), []
    try:  # right but for unknown keys? Then those are the only problems, found without jsonschema
        lenient = LENIENT_DECODER.decode(line.data)
    except DECODE_FAILURES:
        pass
    else:
        view = view_of_struct(lenient, position, line.number)
        where = Location(file=RAW_TRACE_FILE, line=line.number, token_index=view.token_index)
        layers = {"layers": [{"layer_index": layer.layer_index} for layer in lenient.layers]}
        problems = unknown_key_problems(line.data)
        return view, issues_of(
            problems, layers, name=f"raw_events[{position}]", scope="raw_event", location=where
        )
    return _reference(line, position, locate, RAW_SCHEMA[profile])


def _reference(
    line: Line, position: int, locate: bool, artifact: str
) -> tuple[EventView, list[ValidationIssue]]:
    """The reference verdict (jsonschema) for a line the typed decode refused."""
    assert line.data is not None
    key = (artifact, bytes(line.data)) if len(line.data) <= _CACHED_LINE_BYTES else None
    known = _SCHEMA_CACHE.get(key) if key is not None else None
    if known is not None:  # the same bytes again (a run of `{}`): the same problems, located anew
        obj, problems = known
        if not locate:
            return view_of_dict(obj, position, line.number), _unlocated(problems, obj)
    else:
        parsed, issues = parse_line(line.data, RAW_TRACE_FILE, line.number, "raw_event", None)
        if parsed is None:
            return _unreadable(line, position), issues
        obj, problems = parsed, schema_problems(parsed, artifact)
        if key is not None:
            if len(_SCHEMA_CACHE) >= _CACHE_ENTRIES:
                _SCHEMA_CACHE.clear()
                _UNLOCATED.clear()
            _SCHEMA_CACHE[key] = (obj, problems)
    if artifact != "raw_event":  # v0.2: a stray `layers` key is a schema problem, never checked as routing
        obj = {key: value for key, value in obj.items() if key != "layers"}
    view = view_of_dict(obj, position, line.number)
    where = Location(file=RAW_TRACE_FILE, line=line.number, token_index=view.token_index)
    return view, issues_of(problems, obj, name=f"raw_events[{position}]", scope="raw_event", location=where)


def _unlocated(problems: list[Problem], obj: dict[str, Any]) -> list[ValidationIssue]:
    key = id(problems)
    issues = _UNLOCATED.get(key)
    if issues is None or issues[0] is not problems:
        issues = (
            problems,
            issues_of(problems, obj, name="raw_events[?]", scope="raw_event", location=Location()),
        )
        _UNLOCATED[key] = issues
    return issues[1]


_UNLOCATED: dict[int, tuple[list[Problem], list[ValidationIssue]]] = {}
_CACHED_LINE_BYTES = 4096
_CACHE_ENTRIES = 4096
_SCHEMA_CACHE: dict[tuple[str, bytes], tuple[dict[str, Any], list[Problem]]] = {}


def _unreadable(line: Line, position: int) -> EventView:
    return EventView(position, line.number, None, None, None, None, [], [])


def too_long(file: str, line: Line, scope: str, position: int | None) -> ValidationIssue:
    return ValidationIssue(
        scope,
        JSON_PARSE_ERROR,
        f"line is {line.end - line.start} bytes, over the reader's limit of {MAX_LINE_BYTES}",
        location=Location(file=file, line=line.number, token_index=position),
    )
