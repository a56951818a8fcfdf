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

import os

#: bytes written between syncs (large enough that a sync costs little)
DROP_BYTES = 32 * 1024 * 1024


class DropBehind:
    """Call ``wrote(end)`` with the file's written length after each write; every
    ``DROP_BYTES`` the file's data is synced and the pages before ``end`` are dropped."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self.fd = fd
        self.dropped = start  # pages before this offset were dropped already
        self.usable = hasattr(os, "posix_fadvise")

    def wrote(self, end: int) -> None:
        if not self.usable or end - self.dropped < DROP_BYTES:
            return
        os.fdatasync(self.fd)
        os.posix_fadvise(self.fd, self.dropped, end - self.dropped, os.POSIX_FADV_DONTNEED)
        self.dropped = end


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
        self._file.close()

    def __enter__(self) -> DropBehindFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
