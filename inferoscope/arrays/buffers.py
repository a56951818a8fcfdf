"""A reusable byte buffer, page-aligned, for reads that come back block after block.

A fresh buffer a block costs fresh pages every block (on a machine whose free memory goes back to
its host, the first touch of a page is most of the cost of using it); one that is reused and grows
only when too small does not. Page alignment is what direct I/O (``O_DIRECT``) asks of a buffer.
"""

from __future__ import annotations

import mmap

ALIGN = 4096  # a multiple of every logical block size in use, and of the page size


def round_up(size: int) -> int:
    """``size`` rounded up to a multiple of ``ALIGN``."""
    return -(-size // ALIGN) * ALIGN


class AlignedBuffer:
    """A reusable page-aligned byte buffer that grows (to a multiple of ``ALIGN``) as needed."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self.size = 0

    def view(self, size: int) -> memoryview:
        """``size`` bytes of the buffer (its first bytes; the rest of the map is padding); valid
        until the buffer's next use."""
        if size > self.size:
            self.size = round_up(max(size, 1))
            self._map = mmap.mmap(-1, self.size)  # the old one goes when no view holds it
        assert self._map is not None
        return memoryview(self._map)[:size]

    def close(self) -> None:
        self._map = None
        self.size = 0
