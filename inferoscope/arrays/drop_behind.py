"""Large files written once are synced and dropped from the page cache as they grow.

A scrambled twin or a converted run writes gigabytes its writer never reads again. Left in the
page cache, every written page holds memory until the kernel writes it back and reclaims it, and
the close's ``fsync`` waits for all of it at once. Synced and dropped every ``DROP_BYTES``, the
same few pages are reused all through the file (on a virtual machine whose free memory is handed
back to its host, first touching fresh pages was the larger part of writing: 2 GB in 2.8-5.6 s,
against 1.1 s dropped behind, measured on the 2-core development machine). Nothing is lost: the
bytes are on disk, and a later reader reads them from there.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

#: bytes written between syncs (large enough that a sync costs little)
DROP_BYTES = 32 * 1024 * 1024
#: ranges handed to the syncing thread and not yet dropped, at most
WAITING = 2


class DropBehind:
    """Call ``wrote(end)`` with the file's written length after each write; every
    ``DROP_BYTES`` the file's data is synced and the pages before ``end`` are dropped.

    The sync waits on the disk, so it runs on a thread of its own (started at the first range)
    while the writer goes on: at most ``WAITING`` ranges wait for it, so the cache holds a few
    ranges of the file at most. ``finish()`` (before the file is closed) waits for them and
    raises what a sync raised; a later ``wrote`` raises it too."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self.fd = fd
        self.dropped = start  # pages before this offset were handed over to be dropped
        self.usable = hasattr(os, "posix_fadvise")
        self._ranges: queue.Queue[tuple[int, int] | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def due(self, end: int) -> bool:
        """Whether a file written up to ``end`` has a range to drop (a writer that buffers flushes
        only then, and calls ``wrote``)."""
        return self.usable and end - self.dropped >= DROP_BYTES

    def wrote(self, end: int) -> None:
        if self._error is not None:
            raise self._error
        if not self.due(end):
            return
        if self._thread is None:
            self._ranges = queue.Queue(maxsize=WAITING)
            self._thread = threading.Thread(target=self._drop, name="drop-behind", daemon=True)
            self._thread.start()
        assert self._ranges is not None
        self._ranges.put((self.dropped, end))
        self.dropped = end

    def _drop(self) -> None:
        assert self._ranges is not None
        while (span := self._ranges.get()) is not None:
            if self._error is None:
                start, end = span
                try:
                    os.fdatasync(self.fd)
                    os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_DONTNEED)
                except OSError as error:  # raised in the writer's thread
                    self._error = error

    def finish(self) -> None:
        """Wait for every range handed over (call it before the file is closed, error or not)."""
        if self._thread is not None:
            assert self._ranges is not None
            self._ranges.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def __enter__(self) -> DropBehind:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        """Every sync waited for; a sync's error raised unless another is on its way already."""
        if kind is None:
            self.finish()
        else:
            with contextlib.suppress(OSError):
                self.finish()


class DropBehindFile:
    """A binary file written from start to end and dropped behind as it grows: what a writer that
    takes a file object (pyarrow's ``ParquetWriter``) writes through."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by close())
        self._written = 0
        self._drop = DropBehind(self._file.fileno())

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:  # a raw write may take part of the bytes
            count = self._file.write(view)
            if count is None:
                raise BlockingIOError("the file took no bytes")
            view = view[count:]
            self._written += count
        self._drop.wrote(self._written)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        """Nothing waits in this object: every write went to the file."""

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._drop.finish()
        finally:
            self._file.close()

    def __enter__(self) -> DropBehindFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
