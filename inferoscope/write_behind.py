"""Parquet row groups written on a thread while the next one is made.

pyarrow encodes and compresses a table without holding the GIL, so the thread's writing and the
main thread's building of the next table run on two cores; at most one table waits, so memory
grows by one row group. Used where nothing forks once writing starts (a fork beside a running
thread is refused by ``bundle.pipe.can_fork``).
"""

from __future__ import annotations

import queue
import threading
from typing import Any


class WriteBehind:
    """``write_table`` hands the table to the thread. Leaving the ``with`` block waits for every
    table handed over and raises what the writer raised (its first error; later tables are
    dropped); leaving it on an error drops what waits and lets that error through."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.tables: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            table = self.tables.get()
            if table is None:
                return
            if self.error is None:
                try:
                    self.writer.write_table(table)
                except BaseException as error:  # raised in the main thread by the next call
                    self.error = error

    def write_table(self, table: Any) -> None:
        if self.error is not None:
            raise self.error
        self.tables.put(table)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is not None and self.error is None:
            self.error = error  # what still waits is not written
        self.tables.put(None)
        self.thread.join()
        if kind is None and self.error is not None:
            raise self.error
