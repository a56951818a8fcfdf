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
    report: ValidationReport = reader.validate(derived=derived, series=False)
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


class ValidationBeside:
    """``open_valid_reader``'s check run in a forked process, so work on the bundle can go on
    beside it; ``wait()`` raises what ``open_valid_reader`` would have raised. Where a process
    cannot be forked (threads running, not Linux), the check runs at once, before anything else.

    As a context manager: an error in the block waits for the check first, so a source that is
    not clean gets its issues rather than where the work stumbled (errors of the types in
    ``passing`` go through as they are); the check never outlives the block.
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        derived: bool = True,
        passing: tuple[type[BaseException], ...] = (),
    ) -> None:
        import multiprocessing

        from .pipe import can_fork

        self.run_dir, self.derived, self.passing = run_dir, derived, passing
        self._conn: Any = None
        self._process: Any = None
        if not can_fork():
            open_valid_reader(run_dir, derived=derived)
            return
        try:
            RunReader(run_dir)
        except BundleOpenError as exc:
            raise not_found(exc, run_dir) from None
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe(duplex=False)
        # not a daemon: the check forks its own workers (daemons may not)
        self._process = ctx.Process(target=_validate_into, args=(child, run_dir, derived))
        self._process.start()
        child.close()

    def wait(self) -> None:
        """Block until the check is done; RunBundleError (or its kin) if the bundle is not clean."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            outcome = conn.recv()
        except EOFError:
            outcome = None
        finally:
            conn.close()
            self._process.join()
        if outcome is None:  # the checker died: check here, the slow way
            open_valid_reader(self.run_dir, derived=self.derived)
            return
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not True:
            issues, counts = outcome
            raise bundle_error(str(self.run_dir), issues, counts)

    def __enter__(self) -> ValidationBeside:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if isinstance(error, Exception) and not isinstance(error, self.passing):
                self.wait()  # the source's issues, if it is not clean
        finally:
            self.cancel()

    def cancel(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            if self._process.is_alive():
                self._process.kill()
            self._process.join()


def _validate_into(conn: Any, run_dir: Path | str, derived: bool) -> None:
    from .pipe import forked_child

    with forked_child(conn):
        report = RunReader(run_dir).validate(derived=derived, series=False)
        conn.send(True if report.ok else (report.issues, report.counts_by_code()))
