"""Replace a bundle's files as one step, and keep two writers of one bundle apart.

A derive changes four files (derived.ndjson, motif_ledger.json, contingency.json, manifest.json).
Renamed one at a time, a crash between renames leaves a half-derived bundle. Instead the new
bundle is built in a sibling folder (the unchanged files hard-linked, so a large raw trace costs
nothing), validated there, and exchanged with the old folder in one ``renameat2(RENAME_EXCHANGE)``
on Linux; elsewhere two renames, with the old folder kept until the new one is in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .writer import process_alive, sweep_stale

LOCK_NAME = ".inferoscope-write.lock"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class BundleBusyError(FileExistsError):
    """Another process is writing this bundle now."""


@contextmanager
def bundle_lock(folder: Path) -> Iterator[None]:
    """Hold the bundle's write lock; BundleBusyError if a live process holds it (a dead one's is taken)."""
    lock = folder / LOCK_NAME
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and process_alive(holder):
                raise BundleBusyError(
                    f"{folder} is being written by another inferoscope process (pid {holder}); "
                    "try again when it has finished"
                ) from None
            lock.unlink(missing_ok=True)  # left by a process that died: take it over
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    else:
        raise BundleBusyError(f"{folder} is being written by another inferoscope process")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _holder(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def staging_copy(folder: Path, leave_out: set[str]) -> Path:
    """A sibling folder holding every file of ``folder`` but ``leave_out`` (hard links where possible)."""
    prefix = f".{folder.name}.swap-"
    sweep_stale(folder.parent, prefix)
    staging = folder.parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _link_tree(folder, staging, leave_out | {LOCK_NAME})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _link_tree(source: Path, target: Path, leave_out: set[str]) -> None:
    """Hard-link (or copy) every regular file, and the ``arrays/`` folder of a v0.2 bundle."""
    for entry in source.iterdir():
        if entry.name in leave_out or entry.is_symlink():
            continue
        if entry.is_dir():
            if entry.name == "arrays":
                (target / entry.name).mkdir()
                _link_tree(entry, target / entry.name, set())
            continue
        if not entry.is_file():
            continue
        try:
            os.link(entry, target / entry.name)
        except OSError:  # no hard links here (another device, a filesystem without them)
            shutil.copy2(entry, target / entry.name)


def exchange(staging: Path, folder: Path) -> None:
    """Put ``staging`` in ``folder``'s place in one step; the old content is removed after."""
    if _rename_exchange(staging, folder):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old bundle
        return
    old = folder.parent / f".{folder.name}.swap-{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)  # put the untouched bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Linux's atomic exchange of two paths; False where it is not available."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # the kernel or filesystem cannot exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))
