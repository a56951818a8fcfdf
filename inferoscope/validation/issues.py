"""Validation issues: what is wrong, how bad, and exactly where (file, line, token, layer, expert)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Location:
    """Where an issue sits; every field is optional and only set where it applies."""

    file: str | None = None
    line: int | None = None
    token_index: int | None = None
    layer_index: int | None = None
    expert_index: int | None = None
    json_path: str | None = None

    def describe(self) -> str:
        """A short human form such as ``raw_trace.ndjson line 812, token 811, layer 3``."""
        parts: list[str] = []
        if self.file is not None:
            parts.append(self.file if self.line is None else f"{self.file} line {self.line}")
        if self.token_index is not None:
            parts.append(f"token {self.token_index}")
        if self.layer_index is not None:
            parts.append(f"layer {self.layer_index}")
        if self.expert_index is not None:
            parts.append(f"expert {self.expert_index}")
        if self.json_path is not None:
            parts.append(f"at {self.json_path}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "token_index": self.token_index,
            "layer_index": self.layer_index,
            "expert_index": self.expert_index,
            "json_path": self.json_path,
        }


NO_LOCATION = Location()


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One contract violation. ``scope`` and ``code`` follow contract §4; location is ours.

    Two issues are equal when scope, code and message are (as in the original library);
    severity, location and detail (the values involved) describe it further but do not
    take part in equality or hashing.
    """

    scope: str
    code: str
    message: str
    severity: Severity = field(default="error", compare=False)
    location: Location = field(default=NO_LOCATION, compare=False)
    detail: str | None = field(default=None, compare=False)

    @property
    def specific(self) -> str:
        """The most specific wording: the values involved when known, else the contract's sentence."""
        return self.detail or self.message

    def describe(self) -> str:
        where = self.location.describe()
        prefix = f"{where}: " if where else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{prefix}{self.code} [{self.scope}] {self.message}{detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "code": self.code,
            "message": self.message,
            "detail": self.detail,
            "severity": self.severity,
            "location": self.location.to_dict(),
        }


def layer_scope(layer_index: object) -> str:
    """``raw_event.layer[3]``, or ``raw_event.layer[?]`` when the index is unusable."""
    ok = isinstance(layer_index, int) and not isinstance(layer_index, bool)
    return f"raw_event.layer[{layer_index if ok else '?'}]"


def count_by_code(issues: Iterable[ValidationIssue]) -> dict[str, int]:
    """Issue counts per code, most frequent first (ties by code)."""
    counts = Counter(issue.code for issue in issues)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def has_errors(issues: Iterable[ValidationIssue]) -> bool:
    return any(issue.severity == "error" for issue in issues)
