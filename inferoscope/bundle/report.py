"""The outcome of validating a bundle: issues (capped), counts (complete) and aggregates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..validation.aggregates import RunAggregates
from ..validation.issues import ValidationIssue

DEFAULT_MAX_KEPT_ISSUES = 100_000


@dataclass(slots=True)
class ValidationReport:
    """All issues found in one pass. ``issues`` keeps the first ``max_kept``; ``counts`` all."""

    issues: list[ValidationIssue] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    error_count: int = 0
    total: int = 0
    max_kept: int = DEFAULT_MAX_KEPT_ISSUES
    aggregates: RunAggregates = field(default_factory=RunAggregates)

    def add(self, issues: Iterable[ValidationIssue]) -> None:
        for issue in issues:
            self.total += 1
            self.counts[issue.code] += 1
            if issue.severity == "error":
                self.error_count += 1
            if len(self.issues) < self.max_kept:
                self.issues.append(issue)

    def count_more(self, counts: Mapping[str, int]) -> None:
        """Count errors that were found but not built as issues (past a per-block cap)."""
        for code, n in counts.items():
            self.total += n
            self.counts[code] += n
            self.error_count += n

    def absorb(
        self, other: ValidationReport, transform: Callable[[ValidationIssue], ValidationIssue]
    ) -> None:
        """Append another report's issues (through ``transform``), counts and aggregates."""
        room = max(0, self.max_kept - len(self.issues))
        self.issues.extend(transform(issue) for issue in other.issues[:room])
        self.counts.update(other.counts)
        self.total += other.total
        self.error_count += other.error_count
        self.aggregates.absorb(other.aggregates)

    @property
    def truncated(self) -> bool:
        return self.total > len(self.issues)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def counts_by_code(self) -> dict[str, int]:
        return dict(sorted(self.counts.items(), key=lambda item: (-item[1], item[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "issue_count": self.total,
            "error_count": self.error_count,
            "counts_by_code": self.counts_by_code(),
            "truncated": self.truncated,
            "issues": [issue.to_dict() for issue in self.issues],
        }
