"""A spill file written and read around the page cache (``O_DIRECT``) where the file system
allows it, else through it.

A spill is written once, read once and deleted: caching it gains nothing, and putting gigabytes
of it in the page cache costs the memory of every page (on a machine whose free memory is handed
back to a host, the first touch of each page is what costs most). Direct I/O needs buffers,
offsets and lengths aligned to the device's block: the buffers here are page-aligned anonymous
maps, each append is padded to ``ALIGN`` and each read covers the aligned span around the bytes
asked for.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from .arrays.buffers import ALIGN, AlignedBuffer, round_up


class SpillFile:
    """Bytes appended in pieces and read back by offset; ``direct`` says whether the page cache
    is bypassed (decided at the first append: a file system may accept ``O_DIRECT`` at open and
    refuse the first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.direct = hasattr(os, "O_DIRECT")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        try:
            self.fd = os.open(path, flags | (os.O_DIRECT if self.direct else 0), 0o600)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            self.fd = os.open(path, flags, 0o600)
        self.size = 0  # bytes written (a multiple of ALIGN where direct)
        self._staging = AlignedBuffer()
        self._reading = AlignedBuffer()

    def staging(self, size: int) -> np.ndarray:
        """An aligned buffer of ``size`` bytes to fill and pass to ``append`` (saves a copy)."""
        return np.frombuffer(self._staging.view(round_up(size)), dtype=np.uint8)[:size]

    def append(self, data: np.ndarray) -> int:
        """Writes the bytes of ``data`` (best: a ``staging`` buffer); returns their offset."""
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        offset = self.size
        if self.direct:
            padded = round_up(raw.size)
            buffer = self._staging.view(padded)
            target = np.frombuffer(buffer, dtype=np.uint8)
            if raw.ctypes.data != target.ctypes.data:  # not already the staging buffer's start
                target[: raw.size] = raw
            try:
                self._write_all(buffer, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL or self.size:
                    raise
                self._buffered()  # refused at the first write: through the page cache from now on
                return self.append(raw)
            self.size += padded
        else:
            self._write_all(raw.data, offset)
            self.size += raw.size
        return offset

    def _write_all(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], offset + done)

    def _buffered(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.direct = False

    def read(self, offset: int, size: int, into: AlignedBuffer | None = None) -> memoryview:
        """``size`` bytes from ``offset``, in ``into`` (several threads may read at once, each
        into its own buffer) or in the file's own buffer: valid until that buffer's next read."""
        if size == 0:
            return memoryview(b"")
        start = offset - offset % ALIGN if self.direct else offset
        end = round_up(offset + size) if self.direct else offset + size
        buffer = (self._reading if into is None else into).view(end - start)
        done = 0
        while done < end - start:
            got = os.preadv(self.fd, [buffer[done:]], start + done)
            if got == 0:
                break
            done += got
        if done < offset - start + size:
            raise OSError(f"{self.path.name}: spill file shorter than written")
        return buffer[offset - start : offset - start + size]

    def written(self) -> None:
        """Nothing more will be appended: the staging buffer's memory goes back."""
        self._staging.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._staging.close()
        self._reading.close()
