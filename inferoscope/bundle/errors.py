"""The strict loader's and writer's exception: every issue, every code, in one message."""

from __future__ import annotations

from collections.abc import Sequence

from ..textsafe import visible
from ..validation.issues import ValidationIssue, count_by_code

_SHOWN = 20


class RunBundleError(ValueError):
    """A bundle (on disk or about to be written) that breaks the contract."""

    def __init__(
        self, what: str, issues: Sequence[ValidationIssue], counts: dict[str, int] | None = None
    ) -> None:
        self.issues = list(issues)
        self.counts = counts if counts is not None else count_by_code(self.issues)
        total = sum(self.counts.values())
        codes = ", ".join(f"{code} x{count}" for code, count in self.counts.items())
        lines = [visible(f"{what}: {total} issue(s): {codes}" if total else what)]
        lines += [f"  - {visible(issue.describe(), 500)}" for issue in self.issues[:_SHOWN]]
        if total > _SHOWN:
            lines.append(f"  ... and {total - _SHOWN} more")
        super().__init__("\n".join(lines))
