"""run_id rules (contract §6): validated, never rewritten, never allowed to escape the root."""

from __future__ import annotations

from pathlib import Path


class RunIdError(ValueError):
    """A run_id that cannot name a directory under a bundle root."""


def run_id_problem(run_id: object, subject: str = "run_id") -> str | None:
    """Why ``run_id`` is not a canonical relative path, or None when it is.

    The wording of the three faults the original library named (backslashes, a drive or
    root, a non-canonical segment) is kept; NUL and ``scheme:`` prefixes are refused too.
    """
    if not isinstance(run_id, str) or not run_id:
        return f"{subject} must be a non-empty string"
    if "\\" in run_id:
        return f"{subject} must not contain backslashes."
    if "\x00" in run_id:
        return f"{subject} must not contain a NUL character."
    if run_id.startswith("/"):
        return f"{subject} must be a canonical relative path with non-empty segments (it starts with '/')."
    if ":" in run_id.split("/", 1)[0]:
        return f"{subject} must be a relative path without a Windows drive or root (or a 'scheme:' prefix)."
    if any(segment in ("", ".", "..") for segment in run_id.split("/")):
        return f"{subject} must be a canonical relative path with non-empty segments."
    return None


def run_id_path(run_id: str, *, subject: str = "run_id") -> Path:
    """The relative path a run_id names (``a/b`` → ``Path("a", "b")``); RunIdError if it is not one."""
    problem = run_id_problem(run_id, subject)
    if problem is not None:
        raise RunIdError(problem)
    return Path(*run_id.split("/"))


def run_dir_for(root: Path | str, run_id: str, *, subject: str = "run_id") -> Path:
    """The directory of ``run_id`` under ``root``; RunIdError if it would escape."""
    problem = run_id_problem(run_id, subject)
    if problem is not None:
        raise RunIdError(f"{problem} Got {run_id!r}")
    root_path = Path(root)
    target = root_path.joinpath(*run_id.split("/"))
    resolved_root = root_path.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise RunIdError(f"{subject} {run_id!r} escapes the bundle root through a link")
    return target
