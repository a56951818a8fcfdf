"""The atomic bundle writer (contract §5).

Everything is serialised into a hidden staging directory beside the target, validated
there with the same reader every consumer uses, and only then renamed into place in one
step. On any failure the staging directory (and any parent folder this call created) is
removed, so a half-written bundle is never visible under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ..arrays import drop_behind
from ..jsonfmt import NON_STANDARD_NUMBERS, dumps_json_file, dumps_ndjson_line
from ..run_ids import run_dir_for
from ..validation.issues import Location, ValidationIssue
from ..versions import (
    CONTINGENCY_FILE,
    DERIVED_FILE,
    LAYOUT_FILE,
    MANIFEST_FILE,
    MOTIF_LEDGER_FILE,
    RAW_TRACE_FILE,
)
from .errors import RunBundleError, bundle_error
from .reader import RunReader

UNSERIALISABLE = "unserialisable_value"


def write_run_bundle(
    root_dir: Path | str,
    manifest: Mapping[str, Any],
    raw_events: Iterable[Mapping[str, Any]],
    layout: Mapping[str, Any],
    derived_events: Iterable[Mapping[str, Any]] | None = None,
    motif_ledger: Mapping[str, Any] | None = None,
    contingency: Mapping[str, Any] | None = None,
) -> Path:
    """Write a validated bundle to ``root_dir/<run_id>`` and return that directory.

    Raises RunIdError (a ValueError) for a run_id that is not a canonical relative path,
    FileExistsError if the target exists, and RunBundleError listing every issue if the
    bundle breaks the contract (typed as the original library typed it: TypeError for a value
    JSON cannot hold, "failed schema validation" / "failed semantic validation"); in each case
    nothing is left on disk.
    """
    run_id = manifest.get("run_id") if isinstance(manifest, Mapping) else None

    def fill(staging: Path) -> None:
        _write_files(staging, manifest, raw_events, layout, derived_events, motif_ledger, contingency)

    def verify(staging: Path) -> None:
        report = RunReader(staging).validate(series=False)
        if not report.ok:
            raise bundle_error(f"refusing to write {run_id!r}", report.issues, report.counts_by_code())

    return _publish(root_dir, run_id, fill, verify)


def write_prepared_bundle(
    root_dir: Path | str,
    manifest: Mapping[str, Any],
    raw_lines: Iterable[bytes | Path],
    layout: Mapping[str, Any],
    verify: Callable[[], None],
) -> Path:
    """Write a bundle whose raw trace lines are already encoded (contract §5 bytes, ASCII), atomically.

    For a bundle made from a valid one by a transformation that keeps every rule (a scrambled
    twin): ``verify`` checks the source (it raises if the source is not clean) instead of the
    result being validated again; nothing appears under the target name unless it passes.
    A Path among the lines stands for that file's bytes (lines another process wrote), copied
    by the kernel where it can.
    """
    run_id = manifest.get("run_id") if isinstance(manifest, Mapping) else None

    def fill(staging: Path) -> None:
        _write_json(staging / MANIFEST_FILE, manifest, "manifest")
        with (staging / RAW_TRACE_FILE).open("wb") as handle:
            with drop_behind.DropBehind(handle.fileno()) as behind:  # written once, never read here
                for text in raw_lines:
                    if isinstance(text, Path):
                        append_file(handle, text)
                    else:
                        handle.write(text)
                    if behind.due(handle.tell()):
                        handle.flush()
                        behind.wrote(handle.tell())
                handle.flush()
            _sync(handle)
        _write_json(staging / LAYOUT_FILE, layout, "layout")

    return _publish(root_dir, run_id, fill, lambda _staging: verify())


def append_file(handle: IO[bytes], path: Path) -> None:
    """``path``'s bytes after what ``handle`` holds: copied inside the kernel; where that cannot
    go on (not Linux, a file system that cannot, a copy that stops short) read and written from
    where it stopped. OSError unless every byte arrived."""
    handle.flush()
    before = handle.tell()
    with path.open("rb") as source:
        size = left = os.fstat(source.fileno()).st_size
        try:
            while left > 0 and (copied := os.copy_file_range(source.fileno(), handle.fileno(), left)):
                left -= copied
        except (AttributeError, OSError):
            pass
        handle.seek(0, os.SEEK_END)
        if left > 0:
            source.seek(size - left)
            shutil.copyfileobj(source, handle, 1 << 23)
            handle.flush()
    if handle.tell() - before != size:
        raise OSError(f"{path.name}: {handle.tell() - before} of {size} bytes appended")


@contextlib.contextmanager
def spill_folder(root: Path, name: str) -> Iterator[Path]:
    """A temporary folder ``root/.<name>-<pid>-…`` for what a writer spills before the bundle is
    written: on the bundle's own disk (``root`` is made if missing, and folders made here are
    removed again if the work fails), named so that a killed writer's leftovers are swept by the
    next one (``sweep_stale``)."""
    created = _make_parents(root)
    prefix = f".{name}-"
    sweep_stale(root, prefix)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=root) as spill:
            yield Path(spill)
    except BaseException:
        _remove_made(created)
        raise


def _publish(
    root_dir: Path | str, run_id: Any, fill: Callable[[Path], None], verify: Callable[[Path], None]
) -> Path:
    """Fill a staging folder beside ``root_dir/<run_id>``, verify it, rename it into place."""
    target = run_dir_for(root_dir, run_id, subject="manifest run_id")
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"run bundle target already exists: {target}")
    created = _make_parents(target.parent)
    sweep_stale(target.parent, f".{target.name}.staging-")
    staging = target.parent / f".{target.name}.staging-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        staging.mkdir()
        fill(staging)
        verify(staging)
        if target.exists() or target.is_symlink():
            raise FileExistsError(f"run bundle target already exists: {target}")
        try:
            os.rename(staging, target)
        except OSError as exc:  # another writer won the race between the check and the rename
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                raise FileExistsError(f"run bundle target already exists: {target}") from None
            raise
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_made(created)
        raise
    return target


STALE_AFTER_S = 60.0


def sweep_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove ``prefix<pid>-...`` leftovers of writers that were killed; returns what was removed.

    Only entries whose process is gone and which have not changed for a minute are touched,
    so a writer still at work (in this or another process) is never disturbed.
    """
    removed: list[Path] = []
    try:
        entries = [entry for entry in folder.iterdir() if entry.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or process_alive(int(pid_text)):
            continue
        try:
            if time.time() - entry.lstat().st_mtime < STALE_AFTER_S:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: leave it
    return True


def _remove_made(created: list[Path]) -> None:
    """Remove the folders ``_make_parents`` made (innermost first), as far as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def _make_parents(folder: Path) -> list[Path]:
    """Create missing parent folders, returning those created (outermost first)."""
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _write_files(
    staging: Path,
    manifest: Mapping[str, Any],
    raw_events: Iterable[Mapping[str, Any]],
    layout: Mapping[str, Any],
    derived_events: Iterable[Mapping[str, Any]] | None,
    motif_ledger: Mapping[str, Any] | None,
    contingency: Mapping[str, Any] | None,
) -> None:
    _write_json(staging / MANIFEST_FILE, manifest, "manifest")
    _write_ndjson(staging / RAW_TRACE_FILE, raw_events, "raw_events")
    _write_json(staging / LAYOUT_FILE, layout, "layout")
    if derived_events is not None:
        _write_ndjson(staging / DERIVED_FILE, derived_events, "derived_events")
    if motif_ledger is not None:
        _write_json(staging / MOTIF_LEDGER_FILE, motif_ledger, "motif_ledger")
    if contingency is not None:
        _write_json(staging / CONTINGENCY_FILE, contingency, "contingency")


def _refuse(name: str, file: str, line: int | None, exc: Exception) -> RunBundleError:
    if isinstance(exc, ValueError):
        reason = f"holds {NON_STANDARD_NUMBERS} (NaN or Infinity), which JSON cannot represent"
    else:
        reason = f"is not JSON-serialisable ({exc})"
    issue = ValidationIssue(
        "run_bundle", UNSERIALISABLE, f"{name} {reason}", location=Location(file=file, line=line)
    )
    return bundle_error("refusing to write it", [issue])


def _write_json(path: Path, obj: Any, name: str) -> None:
    try:
        text = dumps_json_file(obj)
    except (ValueError, TypeError) as exc:
        raise _refuse(name, path.name, None, exc) from None
    with path.open("wb") as handle:
        handle.write(text.encode("ascii"))
        _sync(handle)


def _write_ndjson(path: Path, events: Iterable[Any], name: str) -> None:
    with path.open("wb") as handle:
        batch: list[str] = []
        for position, event in enumerate(events):
            try:
                batch.append(dumps_ndjson_line(event))
            except (ValueError, TypeError) as exc:
                raise _refuse(f"{name}[{position}]", path.name, position + 1, exc) from None
            if len(batch) >= 256:
                handle.write("".join(batch).encode("ascii"))
                batch.clear()
        handle.write("".join(batch).encode("ascii"))
        _sync(handle)


def _sync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
