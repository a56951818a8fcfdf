"""Reading one bundle file into located issues instead of exceptions."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from ..jsonfmt import JSONParseError, parse_json_bytes
from ..validation.issues import Location, ValidationIssue

MAX_JSON_FILE_BYTES = 512 * 1024 * 1024

MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
JSON_PARSE_ERROR = "json_parse_error"


def file_problem(path: Path, scope: str, *, required: bool) -> ValidationIssue | None:
    """An issue when ``path`` is absent (and required), not a file, or not readable."""
    where = Location(file=path.name)
    try:
        if not path.exists():
            if not required:
                return None
            return ValidationIssue(scope, MISSING_FILE, f"{path.name} is missing", location=where)
        if not path.is_file():
            return ValidationIssue(
                scope, UNREADABLE_FILE, f"{path.name} is not a regular file", location=where
            )
        with path.open("rb"):
            pass
    except OSError as exc:
        return ValidationIssue(
            scope, UNREADABLE_FILE, f"{path.name} cannot be read: {_os_reason(exc)}", location=where
        )
    return None


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or type(exc).__name__


def read_json_object(
    path: Path, scope: str, *, required: bool
) -> tuple[dict[str, Any] | None, list[ValidationIssue]]:
    """Parse a one-object JSON file; on any problem return None and a located issue."""
    problem = file_problem(path, scope, required=required)
    if problem is not None:
        return None, [problem]
    if not path.exists():
        return None, []
    where = Location(file=path.name)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_FILE_BYTES:
            return None, [
                ValidationIssue(
                    scope,
                    UNREADABLE_FILE,
                    f"{path.name} is {size} bytes; the limit is {MAX_JSON_FILE_BYTES}",
                    location=where,
                )
            ]
        data = path.read_bytes()
    except OSError as exc:
        return None, [
            ValidationIssue(
                scope, UNREADABLE_FILE, f"{path.name} cannot be read: {_os_reason(exc)}", location=where
            )
        ]
    try:
        obj = parse_json_bytes(data)
    except JSONParseError as exc:
        line = _line_of(data, exc)
        return None, [
            ValidationIssue(
                scope, JSON_PARSE_ERROR, f"{path.name}: {exc}", location=Location(file=path.name, line=line)
            )
        ]
    if not isinstance(obj, dict):
        return None, [
            ValidationIssue(
                scope,
                JSON_PARSE_ERROR,
                f"{path.name} must hold one JSON object, not {_json_kind(obj)}",
                location=where,
            )
        ]
    return obj, []


def _line_of(data: bytes, exc: JSONParseError) -> int | None:
    return 1 if exc.column == 1 and data[:3] == b"\xef\xbb\xbf" else None


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"


def parse_line(
    data: bytes | memoryview, file: str, line: int, scope: str, token_index: int | None
) -> tuple[dict[str, Any] | None, list[ValidationIssue]]:
    """One NDJSON line as an object, or a located ``json_parse_error``."""
    where = Location(file=file, line=line, token_index=token_index)
    try:
        obj = parse_json_bytes(data)
    except JSONParseError as exc:
        return None, [ValidationIssue(scope, JSON_PARSE_ERROR, str(exc), location=where)]
    if not isinstance(obj, dict):
        return None, [
            ValidationIssue(
                scope, JSON_PARSE_ERROR, f"must be a JSON object, not {_json_kind(obj)}", location=where
            )
        ]
    return obj, []
