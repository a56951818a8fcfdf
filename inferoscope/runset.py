"""A run set: a folder whose direct children are run bundles (what ``inferoscope route`` writes).

Commands that make sense per run accept one: ``validate`` checks every run, ``inspect`` lists them
(size, validation state, source, tokens), ``export`` writes one Parquet dataset partitioned by
source and run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .bundle.reader import BundleOpenError, RunReader
from .versions import LAYOUT_FILE, MANIFEST_FILE, RAW_TRACE_FILE

BUNDLE_FILES = (MANIFEST_FILE, RAW_TRACE_FILE, LAYOUT_FILE)


def is_bundle(path: Path) -> bool:
    return any((path / name).exists() for name in BUNDLE_FILES)


def run_set(path: Path | str) -> list[Path] | None:
    """The runs of a run-set folder (sorted), or None when ``path`` is a bundle or no run set."""
    folder = Path(path)
    if not folder.is_dir() or is_bundle(folder):
        return None
    try:
        children = sorted(
            child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")
        )
    except OSError:
        return None
    runs = [child for child in children if is_bundle(child)]
    return runs or None


def expand(paths: list[str]) -> list[str]:
    """Each path, or the runs of each run-set folder in its place."""
    out: list[str] = []
    for path in paths:
        runs = run_set(path)
        out += [str(run) for run in runs] if runs else [path]
    return out


@dataclass(slots=True)
class RunRow:
    path: Path
    run_id: str | None
    contract: str
    kind: str | None
    tokens: int
    size_bytes: int
    ok: bool | None  # None: not readable
    issues: int
    source: str | None


def run_rows(runs: list[Path]) -> list[RunRow]:
    """One validated row per run (for ``inspect`` of a run set and the app's run-set list)."""
    rows: list[RunRow] = []
    for path in runs:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        try:
            reader = RunReader(path)
        except BundleOpenError:
            rows.append(RunRow(path, None, "?", None, 0, size, None, 0, None))
            continue
        report = reader.validate()
        manifest = reader.manifest or {}
        run_id = manifest.get("run_id")
        kind = manifest.get("run_kind")
        source = reader.token_event(0).source if report.aggregates.events else None
        rows.append(
            RunRow(
                path,
                run_id if isinstance(run_id, str) else None,
                reader.profile,
                kind if isinstance(kind, str) else None,
                report.aggregates.events,
                size,
                report.ok,
                report.total,
                source,
            )
        )
    return rows
