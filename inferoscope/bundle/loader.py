"""The strict loader of contract §7: a whole bundle as dicts, or an exception naming every issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..jsonfmt import parse_json_bytes
from ..versions import CONTINGENCY_FILE, DERIVED_FILE, MANIFEST_FILE, MOTIF_LEDGER_FILE
from .errors import RunBundleNotFoundError, bundle_error
from .files import read_json_object
from .lines import iter_lines
from .reader import BundleOpenError, RunReader
from .report import ValidationReport


def not_found(exc: BundleOpenError, run_dir: Path | str) -> RunBundleNotFoundError:
    """The error for a path that is no bundle at all (also a FileNotFoundError for its manifest)."""
    return RunBundleNotFoundError(
        f"run bundle cannot be opened: {exc} (a bundle needs manifest.json, raw_trace.ndjson, layout.json)",
        [],
        filename=str(Path(run_dir) / MANIFEST_FILE),
    )


def open_valid_reader(run_dir: Path | str, *, derived: bool = True) -> RunReader:
    """A reader on a bundle that validated clean (streaming); RunBundleError names every code if not.

    A missing folder is a RunBundleNotFoundError (also a FileNotFoundError); see ``bundle_error``
    for the other types.
    """
    try:
        reader = RunReader(run_dir)
    except BundleOpenError as exc:
        raise not_found(exc, run_dir) from None
    report: ValidationReport = reader.validate(derived=derived)
    if not report.ok:
        raise bundle_error(str(run_dir), report.issues, report.counts_by_code())
    return reader


def load_run_bundle(run_dir: Path | str) -> dict[str, Any]:
    """Load and fully validate a bundle; RunBundleError lists every code if it is not clean.

    Returns ``manifest``, ``raw_events``, ``layout``, and ``derived_events`` (a list),
    ``motif_ledger`` and ``contingency``, each None when its file is absent. A contract v0.2
    bundle also gives ``arrays``: every array file by its path, as numbers (bfloat16 widened to
    float32); its ``raw_events`` are the token lines, which hold no routing.
    """
    reader = open_valid_reader(run_dir)
    base = Path(run_dir)
    derived_path = base / DERIVED_FILE
    derived = (
        [parse_json_bytes(line.data) for line in iter_lines(derived_path) if line.data is not None]
        if derived_path.exists()
        else None
    )
    loaded: dict[str, Any] = {}
    if reader.profile == "v0.2":
        sidecar = reader.sidecar()
        loaded["arrays"] = {
            relpath: file.read(0, file.header.shape[0]) if file.header.shape else None
            for relpath, file in sidecar.files.items()
        }
    return loaded | {
        "manifest": reader.manifest,
        "raw_events": [reader.event(i) for i in range(len(reader))],
        "layout": reader.layout,
        "derived_events": derived,
        "motif_ledger": read_json_object(base / MOTIF_LEDGER_FILE, "motif_ledger", required=False)[0],
        "contingency": read_json_object(base / CONTINGENCY_FILE, "contingency", required=False)[0],
    }
