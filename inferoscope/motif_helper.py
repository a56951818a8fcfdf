"""A forked process that matches some of a run's clusterings beside this one.

The motifs of each layer and the global motifs are independent clusterings of the same tokens,
so derive splits them between two processes: this one sends every block's distributions for the
helper's clusterings, matches its own meanwhile, then receives the helper's decisions. Each
clustering lives in exactly one process and sees the blocks in order, so the motifs are the same
as in one process. Used only where processes can be forked and two cores are usable.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable
from typing import Any

import numpy as np

from .bundle.pipe import can_fork as forkable
from .bundle.pipe import forked_child, usable_cores
from .motif_blocks import BlockDecisions

GLOBAL = "global"


def can_fork() -> bool:
    """Two usable cores, and a worker may be forked here."""
    return usable_cores() >= 2 and forkable()


class MatchHelper:
    """The helper process: owns the clusterings named ``keys`` (layer indices, or GLOBAL)."""

    def __init__(self, make: Callable[[Any], Any], keys: list[Any]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, make, keys), daemon=True)
        self._process.start()
        child.close()
        self.keys = keys

    def send(self, tokens: np.ndarray, inputs: dict[Any, Any]) -> None:
        """One block: per key, a layer's ``[B, E]`` distributions (GLOBAL: the list of every layer's)."""
        self._conn.send(("block", tokens, inputs))

    def receive(self) -> dict[Any, BlockDecisions]:
        return self._answer()  # type: ignore[no-any-return]

    def finish(self) -> dict[Any, tuple[Any, ...]]:
        """Per key: (ledger parts, rounds, audited, agreed); the process then ends."""
        self._conn.send(("finish",))
        answer = self._answer()
        self.close()
        return answer  # type: ignore[no-any-return]

    def _answer(self) -> Any:
        try:
            answer = self._conn.recv()
        except EOFError:
            raise RuntimeError("the motif helper process ended unexpectedly") from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()
        if self._process.is_alive():
            self._process.kill()
        self._process.join()


def fingerprints_of(key: Any, value: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fingerprints, distributions) of one clustering's input: a layer's distributions minus
    uniform, or for GLOBAL the concatenation over layers."""
    if key == GLOBAL:
        return np.concatenate([v - 1.0 / v.shape[1] for v in value], axis=1), np.concatenate(value, axis=1)
    return value - 1.0 / value.shape[1], value


def _serve(conn: Any, make: Callable[[Any], Any], keys: list[Any]) -> None:
    with forked_child(conn):
        clusters = {key: make(key) for key in keys}
        while True:
            message = conn.recv()
            if message[0] == "finish":
                conn.send(
                    {key: (c.ledger_parts(), c.rounds, c.audited, c.agreed) for key, c in clusters.items()}
                )
                break
            _, tokens, inputs = message
            answer = {}
            for key, value in inputs.items():
                prints, probs = fingerprints_of(key, value)
                answer[key] = clusters[key].assign(prints, probs, tokens)
            conn.send(answer)
