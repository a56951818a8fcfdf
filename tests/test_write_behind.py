"""Row groups written on a thread: every table in order, and an error is never lost."""

from __future__ import annotations

import pytest

from inferoscope.write_behind import WriteBehind


class _Writer:
    def __init__(self, fail_at: int | None = None) -> None:
        self.written: list[int] = []
        self.fail_at = fail_at

    def write_table(self, table: int) -> None:
        if table == self.fail_at:
            raise OSError(f"disk full at table {table}")
        self.written.append(table)


def test_every_table_is_written_in_order_before_the_block_ends() -> None:
    writer = _Writer()
    with WriteBehind(writer) as behind:
        for table in range(50):
            behind.write_table(table)
    assert writer.written == list(range(50))
    assert not behind.thread.is_alive()


def test_the_writers_error_reaches_the_caller_and_later_tables_are_dropped() -> None:
    writer = _Writer(fail_at=3)
    with pytest.raises(OSError, match="disk full at table 3"), WriteBehind(writer) as behind:
        for table in range(20):
            behind.write_table(table)
    assert writer.written == [0, 1, 2]
    assert not behind.thread.is_alive()


def test_an_error_while_building_stops_the_thread_and_is_the_one_raised() -> None:
    writer = _Writer()
    with pytest.raises(KeyError), WriteBehind(writer) as behind:
        behind.write_table(0)
        raise KeyError("bad row")
    assert not behind.thread.is_alive()
    assert writer.written in ([], [0])
