"""The strict loader's and writer's exceptions: every issue, every code, in one message.

``RunBundleError`` is a ValueError. Where the original library raised another built-in type
for the same fault, a subclass is also that type (a missing file is a FileNotFoundError, an
unparseable line a json.JSONDecodeError, an unserialisable value a TypeError), so code written
against either library catches it, and still finds every located issue in ``.issues``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..jsonfmt import NON_STANDARD_NUMBERS
from ..textsafe import visible
from ..validation.issues import ValidationIssue, count_by_code

_SHOWN = 20

#: what a disk that cannot take a file raises (full, over quota, too large, read-only, failing)
WRITE_FAILURES = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO))


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
        # not super(): a subclass may also derive from an exception with another constructor
        ValueError.__init__(self, "\n".join(lines))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunBundleNotFoundError(RunBundleError, FileNotFoundError):
    """The run folder or one of its required files does not exist.

    Like the original's error, the message starts with ``[Errno 2] No such file or directory:
    '<the file>'``, and ``errno`` and ``filename`` are set.
    """

    def __init__(
        self,
        what: str,
        issues: Sequence[ValidationIssue],
        counts: dict[str, int] | None = None,
        *,
        filename: str | None = None,
    ) -> None:
        head = f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}: {filename!r}: " if filename else ""
        super().__init__(head + what, issues, counts)
        self.errno = errno.ENOENT
        self.strerror = os.strerror(errno.ENOENT)
        self.filename = filename


class RunBundleJSONError(RunBundleError, json.JSONDecodeError):
    """A file or line of the bundle is not JSON (``lineno`` is its line where one is known)."""

    def __init__(
        self, what: str, issues: Sequence[ValidationIssue], counts: dict[str, int] | None = None
    ) -> None:
        super().__init__(what, issues, counts)
        first = next((i for i in self.issues if i.code == "json_parse_error"), None)
        self.msg = first.message if first is not None else what
        self.doc = ""
        self.pos = 0
        self.lineno = (first.location.line if first is not None else None) or 1
        self.colno = 1


class RunBundleTypeError(RunBundleError, TypeError):
    """A value handed to the writer that JSON cannot represent."""


def bundle_error(
    subject: str, issues: Sequence[ValidationIssue], counts: dict[str, int] | None = None
) -> RunBundleError:
    """The exception for a bundle with these issues, typed as the original library typed it.

    The message starts with the original's words for the first check that failed, in its
    order (a missing file, JSON that cannot be parsed, the schema, the semantic rules), then
    names ``subject`` (the folder, or what was being written), every code and the issues.
    """
    codes = set(counts) if counts is not None else {issue.code for issue in issues}
    odd = any(NON_STANDARD_NUMBERS in issue.message for issue in issues)
    if "missing_file" in codes:
        missing = next(
            (i.location.file for i in issues if i.code == "missing_file" and i.location.file), None
        )
        return RunBundleNotFoundError(
            f"run bundle is missing a required file: {subject}",
            issues,
            counts,
            filename=str(Path(subject) / missing) if missing else None,
        )
    if "json_parse_error" in codes:
        reason = f"holds {NON_STANDARD_NUMBERS} (NaN or Infinity)" if odd else "holds text that is not JSON"
        return RunBundleJSONError(f"run bundle {reason}: {subject}", issues, counts)
    if "unserialisable_value" in codes:
        if odd:
            return RunBundleError(f"payload contains {NON_STANDARD_NUMBERS}: {subject}", issues, counts)
        return RunBundleTypeError(f"payload holds a value JSON cannot represent: {subject}", issues, counts)
    if "schema_violation" in codes:
        return RunBundleError(f"run bundle failed schema validation: {subject}", issues, counts)
    return RunBundleError(f"run bundle failed semantic validation: {subject}", issues, counts)
