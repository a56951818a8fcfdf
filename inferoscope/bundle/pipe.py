"""Length-prefixed pickled messages between validation and its worker processes, and the
body every forked worker runs in.

Only messages this package wrote are unpickled here (the caller owns both ends of the pipe);
nothing from a bundle is ever unpickled.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import struct
import threading
from collections.abc import Iterator
from typing import IO, Any

_HEADER = struct.Struct("!Q")


def send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("worker closed its output")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("worker output cut short")
    return pickle.loads(data)


#: prctl's request that a signal be sent to this process when its parent ends (Linux)
_PR_SET_PDEATHSIG = 1


def end_with_parent() -> None:
    """(First thing in a forked worker.) Ask the kernel to end this process when the process
    that forked it ends. A parent stopped by a signal of its own (``kill -INT`` of the command
    alone, not of its group) left its workers running: one finished its part and then waited
    forever to send it, holding the command's output pipes open. Where the request cannot be
    made (not Linux), nothing changes."""
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # it ended before the request
        os._exit(1)


@contextlib.contextmanager
def forked_child(conn: Any) -> Iterator[None]:
    """The body of a forked worker: it ends with its parent (``end_with_parent``), an exception
    is sent to the parent (which then never waits on a dead child), a parent that stopped
    listening ends it quietly, and the child always leaves with ``os._exit`` (the parent's exit
    handlers and buffers are not its to run)."""
    end_with_parent()
    try:
        yield
    except (BrokenPipeError, EOFError):
        pass
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(exc)
    finally:
        with contextlib.suppress(OSError):
            conn.close()
        os._exit(0)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system says; else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def can_fork() -> bool:
    """Whether a worker may be forked here: the start method exists and no other thread runs
    (forking beside threads can copy a lock another thread holds)."""
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def can_fork_beside() -> bool:
    """Whether work is worth a second process beside this one: two usable cores, and a worker
    may be forked here."""
    return usable_cores() >= 2 and can_fork()
