"""One function run in a forked process beside this one; what it returns (or raises) comes back.

For work cut in two halves on two cores: the forked process does the second half (writing
what it makes to a file of its own) while this one does the first. Only where a process may be
forked (``bundle.pipe.can_fork``: Linux, no other thread running).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

from .bundle.pipe import forked_child


class ForkedCall:
    """``function(*args)`` in a forked process. ``result()`` waits for it; ``close()`` stops it
    (a half no longer wanted) and is safe to call at any time, more than once."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe(duplex=False)
        self._process: Any = ctx.Process(target=_run, args=(child, function, args), daemon=True)
        self._process.start()
        child.close()

    def result(self) -> Any:
        """What the function returned; what it raised is raised here (ChildProcessError if the
        process ended without a word)."""
        try:
            outcome = self._conn.recv()
        except EOFError:
            outcome = None
        finally:
            self.close()
        if isinstance(outcome, BaseException):
            raise outcome
        if not isinstance(outcome, tuple) or len(outcome) != 2 or outcome[0] != "returned":
            raise ChildProcessError("the forked half ended without a result")
        return outcome[1]

    def close(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        stop(process)
        self._conn.close()


def stop(process: Any) -> None:
    """End a forked helper: asked first (SIGTERM), killed if it does not go within 2 s."""
    if process.is_alive():
        process.terminate()
        process.join(2.0)
        if process.is_alive():
            process.kill()
    process.join()


def _run(conn: Any, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    with forked_child(conn):
        conn.send(("returned", function(*args)))
