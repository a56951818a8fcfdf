"""Forked workers never outlive the process that forked them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from typing import Any

import pytest

from inferoscope.bundle.pipe import forked_child

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux parent-death signal")


def _worker(conn: Any) -> None:
    with forked_child(conn):
        conn.send(os.getpid())
        time.sleep(60)  # a part that takes long, or a send no one will read


def _middle(conn: Any) -> None:
    """A check beside a command: it forks a worker, then is killed outright."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_worker, args=(sender,), daemon=True)
    worker.start()
    conn.send(receiver.recv())
    time.sleep(60)


def _gone(pid: int, within: float) -> bool:
    """Ended within ``within`` seconds (a zombie has ended: only its reaping is left)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_a_worker_whose_parent_is_killed_ends_with_it() -> None:
    """``kill -INT`` of a command alone ends it and has it kill its check; the check's own
    workers then ended only when they finished, and one that finished its part waited forever
    to send it (holding the command's output pipes open)."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    middle = ctx.Process(target=_middle, args=(sender,))
    middle.start()
    assert receiver.poll(10)
    worker = receiver.recv()
    try:
        os.kill(middle.pid, signal.SIGKILL)  # type: ignore[arg-type]
        middle.join()
        assert _gone(worker, 10)
    finally:
        if not _gone(worker, 0.01):
            os.kill(worker, signal.SIGKILL)
