"""run_id rules (SPEC §6): validated, never rewritten, never allowed to escape the root."""

from __future__ import annotations

from pathlib import Path


class RunIdError(ValueError):
    """A run_id that cannot name a directory under a bundle root."""


def run_id_problem(run_id: object) -> str | None:
    """Why ``run_id`` is not a canonical relative path, or None when it is."""
    if not isinstance(run_id, str) or not run_id:
        return "run_id must be a non-empty string"
    if "\\" in run_id:
        return "run_id must not contain a backslash"
    if "\x00" in run_id:
        return "run_id must not contain a NUL character"
    if run_id.startswith("/"):
        return "run_id must be relative (it starts with '/')"
    first = run_id.split("/", 1)[0]
    if ":" in first and len(first) >= 2 and first[1] == ":":
        return "run_id must not start with a drive ('C:')"
    if ":" in first:
        return "run_id must not start with a drive or scheme ('a:b')"
    for segment in run_id.split("/"):
        if segment in ("", ".", ".."):
            return "run_id must not have an empty, '.' or '..' segment"
    return None


def run_dir_for(root: Path | str, run_id: str) -> Path:
    """The directory of ``run_id`` under ``root``; RunIdError if it would escape."""
    problem = run_id_problem(run_id)
    if problem is not None:
        raise RunIdError(f"{problem}: {run_id!r}")
    root_path = Path(root)
    target = root_path.joinpath(*run_id.split("/"))
    resolved_root = root_path.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise RunIdError(f"run_id {run_id!r} escapes the bundle root through a link")
    return target
