"""The array files of a contract v0.2 bundle, opened for reading: headers checked once, rows
read by slicing a memory map (token i costs one small read per array).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..arrays.buffers import AlignedBuffer
from ..arrays.npy import NpyHeader, NpyHeaderError, contract_dtype, from_disk, read_header_of
from ..routing import Routing, RoutingGroup

#: role -> the trailing shape of one row, from (layers in the group, experts, k)
ROW_SHAPES = {
    "selected": lambda lg, e, k: (lg, k),
    "weights": lambda lg, e, k: (lg, k),
    "scores": lambda lg, e, k: (lg, e),
    "prompt_selected": lambda lg, e, k: (lg, k),
    "prompt_weights": lambda lg, e, k: (lg, k),
    "prompt_scores": lambda lg, e, k: (lg, e),
}
INDEX_DTYPES = ("int16", "int32")


@dataclass(frozen=True, slots=True)
class ArrayFile:
    """One declared array file whose header could be read."""

    relpath: str
    path: Path
    header: NpyHeader
    dtype: str  # the contract dtype it holds

    def read_raw(self, start: int, stop: int) -> bytes:
        """The stored bytes of rows ``[start, stop)``, by one ``pread`` (no memory map: reading a
        whole run block by block keeps the process's memory flat)."""
        fd, offset, size = self._open_rows(start, stop)
        if size == 0:
            return b""
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            raise OSError(f"{self.relpath}: file shorter than its header says")
        return data

    def read_raw_into(self, start: int, stop: int, into: AlignedBuffer) -> memoryview:
        """``read_raw`` into a buffer that is reused (the view returned is valid until its next
        use): a fresh buffer a block would cost fresh pages every block."""
        fd, offset, size = self._open_rows(start, stop)
        if size == 0:
            return memoryview(b"")
        data = into.view(size)
        got = 0
        try:
            while got < size and (step := os.preadv(fd, [data[got:]], offset + got)):
                got += step
        finally:
            os.close(fd)
        if got != size:
            raise OSError(f"{self.relpath}: file shorter than its header says")
        return data

    def _open_rows(self, start: int, stop: int) -> tuple[int, int, int]:
        """(an open descriptor, or -1 when there is nothing to read; offset; bytes) of rows."""
        rows = max(0, min(stop, self.header.shape[0]) - start)
        size = rows * self.header.row_bytes
        if size == 0:
            return -1, 0, 0
        return os.open(self.path, os.O_RDONLY), self.header.offset + start * self.header.row_bytes, size

    def rows_of(self, data: bytes | memoryview) -> np.ndarray:
        """Stored bytes of whole rows as an array (bfloat16 widened to float32)."""
        row = self.header.row_bytes
        count = len(data) // row if row else 0
        stored = np.frombuffer(data, dtype=self.header.dtype).reshape((count, *self.header.shape[1:]))
        return from_disk(stored, self.dtype)

    def read(self, start: int, stop: int, into: AlignedBuffer | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as numbers (``into``: see ``read_raw_into``)."""
        data = self.read_raw(start, stop) if into is None else self.read_raw_into(start, stop, into)
        return self.rows_of(data)


class Sidecar:
    """Every array file of a v0.2 bundle that opened cleanly; the rest are left out (validation says why)."""

    def __init__(self, run_dir: Path, routing: Routing, declared: dict[str, object]) -> None:
        self.run_dir = run_dir
        self.routing = routing
        self.files: dict[str, ArrayFile] = {}
        self.problems: dict[str, str] = {}  # relpath -> why it is not usable
        for group in routing.groups:
            for relpath in group.arrays.values():
                if relpath in self.files or relpath in self.problems:
                    continue
                self._open(relpath, declared.get(relpath))

    def _open(self, relpath: str, declaration: object) -> None:
        path = self.run_dir / relpath
        try:
            header = read_header_of(path)
        except FileNotFoundError:
            self.problems[relpath] = "missing"
            return
        except (NpyHeaderError, OSError) as exc:
            self.problems[relpath] = str(exc)
            return
        dtype = contract_dtype(header.dtype)
        if dtype is None:
            self.problems[relpath] = f"dtype {header.dtype} is not one the contract allows"
            return
        if isinstance(declaration, dict) and declaration.get("dtype") != dtype:
            self.problems[relpath] = f"holds {dtype} but manifest arrays declares {declaration.get('dtype')}"
            return
        try:
            size = path.stat().st_size
        except OSError as exc:
            self.problems[relpath] = str(exc)
            return
        if size != header.offset + header.data_bytes:
            self.problems[relpath] = (
                f"is {size} bytes but its header declares {header.offset + header.data_bytes}"
            )
            return
        self.files[relpath] = ArrayFile(relpath, path, header, dtype)

    def array(self, group: RoutingGroup, role: str) -> ArrayFile | None:
        relpath = group.arrays.get(role)
        return None if relpath is None else self.files.get(relpath)

    def rows(self, group: RoutingGroup, role: str, start: int, stop: int) -> np.ndarray | None:
        """Rows ``[start, stop)`` of a group's array as numbers (bfloat16 widened), or None."""
        file = self.array(group, role)
        if file is None:
            return None
        return file.read(start, stop)

    def whole(self, group: RoutingGroup, role: str) -> np.ndarray | None:
        file = self.array(group, role)
        if file is None:
            return None
        return self.rows(group, role, 0, file.header.shape[0]) if file.header.shape else None
