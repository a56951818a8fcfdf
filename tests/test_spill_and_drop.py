"""The spill file beside the page cache, and array files hashed and dropped as they are written."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferoscope import direct_spill
from inferoscope.arrays import drop_behind
from inferoscope.arrays.npy import NpyAppender, file_sha256, read_header_of
from inferoscope.direct_spill import SpillFile


def _pieces(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(n), dtype=np.uint8) for n in (1, 4095, 4096, 4097, 70_000, 0, 13)]


def _round_trip(spill: SpillFile, pieces: list[np.ndarray]) -> None:
    offsets = []
    for piece in pieces:
        staging = spill.staging(piece.size)
        staging[:] = piece
        offsets.append(spill.append(staging))
    offsets.append(spill.append(pieces[4]))  # not a staging buffer: copied into one
    for piece, offset in zip([*pieces, pieces[4]], offsets, strict=True):
        assert bytes(spill.read(offset, piece.size)) == piece.tobytes()
        if piece.size > 10:  # a part from inside a piece, unaligned at both ends
            assert bytes(spill.read(offset + 3, piece.size - 7)) == piece[3:-4].tobytes()


@pytest.mark.parametrize("direct", [True, False])
def test_a_spill_gives_back_every_byte_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """Around the page cache, or through it where the system has no direct I/O."""
    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    spill = SpillFile(tmp_path / "spill")
    try:
        assert spill.direct == (direct and hasattr(os, "O_DIRECT"))
        _round_trip(spill, _pieces(1))
    finally:
        spill.close()


@pytest.fixture
def spill(tmp_path: Path) -> Iterator[SpillFile]:
    made = SpillFile(tmp_path / "spill")
    try:
        yield made
    finally:
        made.close()


def test_a_file_system_that_refuses_the_first_direct_write_gets_buffered_writes(
    spill: SpillFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    refused = []

    def refusing(fd: int, data: object, offset: int) -> int:
        if spill.direct:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(direct_spill.os, "pwrite", refusing)
    _round_trip(spill, _pieces(3))
    assert refused and not spill.direct


def test_a_write_error_other_than_a_refusal_of_direct_io_is_raised(
    spill: SpillFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_spill.os, "pwrite", full)
    with pytest.raises(OSError, match="No space"):
        spill.append(np.ones(10, dtype=np.uint8))


@pytest.mark.parametrize("expected", [5 * 7, 5 * 7 + 1, None])
def test_an_array_hashed_as_written_has_the_hash_of_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: int | None
) -> None:
    """Rows as expected: hashed as written (and dropped behind every few bytes); otherwise the
    header is rewritten and the hash is left to be read from the file."""
    monkeypatch.setattr(drop_behind, "DROP_BYTES", 1000)
    path = tmp_path / "a.npy"
    appender = NpyAppender(path, "float32", (3, 4), rows_expected=expected, drop_behind=True)
    rows = np.random.default_rng(4).random((35, 3, 4), dtype=np.float32)
    for start in range(0, 35, 5):
        appender.append(rows[start : start + 5])
    assert appender.sha256 is None  # not before the close
    appender.close()

    assert np.array_equal(np.load(path), rows)
    assert read_header_of(path).shape == (35, 3, 4)
    assert appender.sha256 == (file_sha256(path) if expected == 35 else None)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_parquet_file_written_through_the_drop_behind_file_is_the_file_written_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export writes its Parquet through ``DropBehindFile``: the bytes are those pyarrow
    writes to a path, and its pages are dropped as the file grows (every few bytes here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dropped = _dropped_ranges(monkeypatch, 4096)
    rng = np.random.default_rng(9)
    table = pa.table(
        {
            "scores": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.random(64 * 2000, dtype=np.float32)), 64
            ),
            "token": pa.array(np.arange(2000)),
        }
    )
    with pq.ParquetWriter(tmp_path / "by-path.parquet", table.schema, compression="zstd") as writer:
        writer.write_table(table)
        writer.write_table(table)
    with (
        drop_behind.DropBehindFile(tmp_path / "dropped.parquet") as sink,
        pq.ParquetWriter(sink, table.schema, compression="zstd") as writer,
    ):
        writer.write_table(table)
        writer.write_table(table)
    written = (tmp_path / "dropped.parquet").read_bytes()
    assert written == (tmp_path / "by-path.parquet").read_bytes()
    assert pq.read_table(tmp_path / "dropped.parquet").equals(pa.concat_tables([table, table]))
    assert len(dropped) >= 2 and dropped[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(dropped))  # in order, no gap


def test_a_failed_sync_behind_the_writer_is_raised_and_no_sync_outlives_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The syncs run on a thread beside the writer: a disk error there reaches the writer (at
    its next write or its close), and closing the file waits for every sync handed over."""
    monkeypatch.setattr(drop_behind, "DROP_BYTES", 1000)
    synced: list[int] = []

    def failing(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.EIO, "the disk failed")

    monkeypatch.setattr(os, "fdatasync", failing)
    appender = NpyAppender(tmp_path / "a.npy", "float32", (64,), rows_expected=1000, drop_behind=True)
    with pytest.raises(OSError, match="the disk failed"):
        for _ in range(100):
            appender.append(np.zeros((10, 64), dtype=np.float32))
        appender.close()
    appender.abort()
    assert len(synced) == 2  # nothing synced after the error
    assert not [t for t in threading.enumerate() if t.name == "drop-behind"]


def test_a_v01_twin_is_dropped_behind_as_written_and_is_the_same_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The v0.1.0 twin's raw trace is synced and dropped every few bytes as it is written (its
    own lines and the forked half's file appended after them), and its bytes are those of a
    twin written with no dropping at all."""
    from inferoscope.cli import EXAMPLE_RUN
    from inferoscope.scramble import scramble_bundle

    plain = scramble_bundle(EXAMPLE_RUN, tmp_path / "plain", "experts", seed=4)
    dropped = _dropped_ranges(monkeypatch, 64 * 1024)
    twin = scramble_bundle(EXAMPLE_RUN, tmp_path / "dropped", "experts", seed=4)
    trace = (twin / "raw_trace.ndjson").read_bytes()
    assert trace == (plain / "raw_trace.ndjson").read_bytes()
    assert len(dropped) >= 5 and dropped[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(dropped))
    assert dropped[-1][0] + dropped[-1][1] > len(trace) - 64 * 1024


def _dropped_ranges(monkeypatch: pytest.MonkeyPatch, every: int) -> list[tuple[int, int]]:
    """Drop behind every ``every`` bytes, and the (offset, length) of every range dropped."""
    monkeypatch.setattr(drop_behind, "DROP_BYTES", every)
    dropped: list[tuple[int, int]] = []
    advise = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        dropped.append((offset, length))
        advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    return dropped
