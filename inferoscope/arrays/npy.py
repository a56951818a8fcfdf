"""The array files of contract v0.2: standard ``.npy`` files, appendable while a capture runs.

Why ``.npy``: numpy (and through it torch, JAX, pandas) reads it with one call and no
dependency, ``np.load(path, mmap_mode="r")`` maps it, and a row is at a fixed offset, so token
i is one ``pread``. Appending is writing rows at the end; the header's shape is rewritten in
place at close. The header is always padded to ``HEADER_BYTES`` so that rewrite never moves the
data. While a capture runs the header says 0 rows and the rows on disk are
``(file size - HEADER_BYTES) // row bytes``; a live reader counts them that way.

bfloat16 has no numpy dtype: its arrays are stored as ``<u2`` holding the bfloat16 bit
patterns (the top half of a float32), and the manifest says ``bfloat16``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from .drop_behind import DropBehind

HEADER_BYTES = 128
MAX_HEADER_BYTES = 4096

#: contract dtype name -> the dtype stored on disk (little-endian)
DISK_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float64": np.dtype("<f8"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


class NpyHeaderError(ValueError):
    """The file is not a ``.npy`` array this contract accepts; the message says why."""


@dataclass(frozen=True, slots=True)
class NpyHeader:
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # where the data starts

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def header_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 header for ``shape``, padded with spaces to exactly HEADER_BYTES."""
    text = repr({"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    room = HEADER_BYTES - 10
    if len(text) + 1 > room:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    body = (text + " " * (room - len(text) - 1) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def read_header(handle: IO[bytes]) -> NpyHeader:
    """Parse the header of an open ``.npy`` file; NpyHeaderError for anything unusable."""
    try:
        version = npformat.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(handle, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(handle, max_header_size=MAX_HEADER_BYTES)
        else:
            raise NpyHeaderError(f".npy format version {version} is not supported")
    except NpyHeaderError:
        raise
    except (ValueError, TypeError, SyntaxError, OSError, EOFError) as exc:
        raise NpyHeaderError(f"not a .npy array: {_first_line(exc)}") from None
    if fortran:
        raise NpyHeaderError("Fortran-ordered arrays are not accepted (rows must be contiguous)")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise NpyHeaderError(f"dtype {dtype} is not a plain number type")
    return NpyHeader(dtype, tuple(int(n) for n in shape), handle.tell())


def read_header_of(path: Path) -> NpyHeader:
    with path.open("rb") as handle:
        return read_header(handle)


def contract_dtype(disk: np.dtype) -> str | None:
    """The contract's name for a dtype read from disk (``<u2`` is bfloat16 bits), or None."""
    for name, candidate in DISK_DTYPES.items():
        if disk == candidate:
            return name
    return None


def to_disk(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as stored for contract dtype ``dtype`` (bfloat16: rounded to nearest even)."""
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        out = (rounded >> np.uint32(16)).astype(np.uint16)
        nan = np.isnan(values)
        if nan.any():
            out[nan] = 0x7FC0
        return out
    return np.ascontiguousarray(values, dtype=DISK_DTYPES[dtype])


def from_disk(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values as numbers: bfloat16 bits widened to float32, everything else as is."""
    if dtype == "bfloat16":
        return (np.asarray(stored, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.asarray(stored)


def file_sha256(path: Path) -> str:
    """The SHA-256 of the whole file, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class NpyAppender:
    """Rows appended to a ``.npy`` file; ``close()`` writes the final shape into the header.

    A writer that knows how many rows it will write (``rows_expected``: a twin, a conversion)
    writes the final header first and hashes the file as it writes it (``sha256`` after a close
    that wrote that many rows), so the file is never read back; ``drop_behind`` syncs the file
    and drops its pages from the cache as it grows (see ``drop_behind``)."""

    def __init__(
        self,
        path: Path,
        dtype: str,
        row_shape: tuple[int, ...],
        *,
        rows_expected: int | None = None,
        drop_behind: bool = False,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self.rows_expected = rows_expected
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * DISK_DTYPES[dtype].itemsize
        header = header_bytes(DISK_DTYPES[dtype], (rows_expected or 0, *self.row_shape))
        self._digest = hashlib.sha256(header) if rows_expected is not None else None
        self._handle: IO[bytes] | None = path.open("xb")
        self._handle.write(header)
        self._written = len(header)
        self._drop = DropBehind(self._handle.fileno()) if drop_behind else None

    def append(self, rows: np.ndarray) -> None:
        """Add one row (shape ``row_shape``) or several (``[n, *row_shape]``)."""
        if self._handle is None:
            raise ValueError(f"{self.path.name} is closed")
        data = np.asarray(rows)
        if data.shape == self.row_shape:
            data = data[None]
        if data.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {data.shape[1:]}, expected {self.row_shape}")
        stored = to_disk(data, self.dtype)
        self._handle.write(stored.data)  # its buffer, not a copy
        if self._digest is not None:
            self._digest.update(stored.data)
        self.rows += int(data.shape[0])
        self._written += stored.nbytes
        if self._drop is not None:
            self._handle.flush()
            self._drop.wrote(self._written)

    @property
    def sha256(self) -> str | None:
        """The file's SHA-256 where it was hashed as written (closed, with the rows expected)."""
        if self._handle is not None or self._digest is None:
            return None
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            if self.rows_expected is None or self.rows != self.rows_expected:
                self._digest = None  # the header changes: hashed again from the file
                handle.seek(0)
                handle.write(header_bytes(DISK_DTYPES[self.dtype], (self.rows, *self.row_shape)))
            handle.flush()
            if self._drop is not None:
                self._drop.finish()
            os.fsync(handle.fileno())
        finally:
            self._stop_dropping()
            handle.close()

    def abort(self) -> None:
        if self._handle is not None:
            self._stop_dropping()
            self._handle.close()
            self._handle = None

    def _stop_dropping(self) -> None:
        """No sync of this file may outlive it (its descriptor's number is reused once closed)."""
        if self._drop is not None:
            with contextlib.suppress(OSError):
                self._drop.finish()


def write_array(path: Path, values: np.ndarray, dtype: str) -> None:
    """One whole array in the same layout the appender writes."""
    data = np.asarray(values)
    appender = NpyAppender(path, dtype, tuple(data.shape[1:]))
    try:
        appender.append(data) if data.shape[0] else None
    except BaseException:
        appender.abort()
        raise
    appender.close()


def rows_on_disk(path: Path, header: NpyHeader) -> int:
    """Whole rows present after the header (what a live reader of an open capture sees)."""
    if header.row_bytes == 0:
        return header.shape[0] if header.shape else 0
    return max(0, (path.stat().st_size - header.offset) // header.row_bytes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
