"""The strict loader of SPEC §7: a whole bundle as dicts, or an exception naming every issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..jsonfmt import parse_json_bytes
from ..versions import CONTINGENCY_FILE, DERIVED_FILE, MOTIF_LEDGER_FILE
from .errors import RunBundleError
from .files import read_json_object
from .lines import iter_lines
from .reader import BundleOpenError, RunReader
from .report import ValidationReport


def open_valid_reader(run_dir: Path | str) -> RunReader:
    """A reader on a bundle that validated clean (streaming); RunBundleError names every code if not."""
    try:
        reader = RunReader(run_dir)
    except BundleOpenError as exc:
        raise RunBundleError(f"run bundle cannot be opened: {exc}", []) from None
    report: ValidationReport = reader.validate()
    if not report.ok:
        raise RunBundleError(
            f"run bundle {run_dir} failed validation", report.issues, report.counts_by_code()
        )
    return reader


def load_run_bundle(run_dir: Path | str) -> dict[str, Any]:
    """Load and fully validate a bundle; RunBundleError lists every code if it is not clean.

    Returns ``manifest``, ``raw_events``, ``layout``, ``derived_events`` (a list, empty when
    the file is absent), ``motif_ledger`` and ``contingency`` (None when absent).
    """
    reader = open_valid_reader(run_dir)
    base = Path(run_dir)
    derived_path = base / DERIVED_FILE
    derived = (
        [parse_json_bytes(line.data) for line in iter_lines(derived_path) if line.data is not None]
        if derived_path.exists()
        else []
    )
    return {
        "manifest": reader.manifest,
        "raw_events": [reader.event(i) for i in range(len(reader))],
        "layout": reader.layout,
        "derived_events": derived,
        "motif_ledger": read_json_object(base / MOTIF_LEDGER_FILE, "motif_ledger", required=False)[0],
        "contingency": read_json_object(base / CONTINGENCY_FILE, "contingency", required=False)[0],
    }
