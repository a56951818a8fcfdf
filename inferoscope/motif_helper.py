"""A forked process that matches some of a run's clusterings beside this one.

The motifs of each layer and the global motifs are independent clusterings of the same tokens,
so derive splits them between two processes: this one sends every block's distributions for the
helper's clusterings, matches its own meanwhile, then receives the helper's decisions. Each
clustering lives in exactly one process and sees the blocks in order, so the motifs are the same
as in one process. Used only where processes can be forked and two cores are usable.

Which clusterings go to the helper is measured, not assumed: their costs differ by run (a global
fingerprint over 16 layers of 64 experts costs as much as all 16 layers on a run without
structure; on the demo's 4 layers of 16 it costs 1.4 layers), and this process also reads the
blocks and writes the lines. The first ``MEASURED_BLOCKS`` blocks are matched here, each
clustering timed; the helper is forked then, carrying the state of the clusterings it takes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .bundle.pipe import forked_child
from .motif_blocks import BlockDecisions

GLOBAL = "global"
MEASURED_BLOCKS = 8  # matched in this process, timed, before the helper takes its share
#: a clustering's time in the helper over its time here, its inputs' sending and receiving
#: included. Measured on the demo repeated to 500,000 tokens: with a block of a layer matched in
#: 0.25 ms, the helper's share of each block (receiving, fingerprints, sending back) is a larger
#: part than it was at 0.4 ms: given the global motifs and two layers (1.4 x 0.82 ms estimated)
#: the helper took 1.3 ms a block and this process waited 1.4 s for it (5.4 s in all); at 1.6 the
#: split gives it the global motifs and one layer, and derive takes 5.05-5.2 s. On a run without
#: structure (20,000 tokens, 16 x 64, --cap 1024) 1.4 and 1.6 give the same split and time.
HELPER_SLOWDOWN = 1.6


class SplitClock:
    """Times each clustering's matching and this process's other work per block, over the
    blocks after the first (whose motifs are all new) and before the split. ``costs`` and
    ``fixed`` are medians a block: the first blocks run beside the check's start and the
    helper's fork, and one slow block (13-19 ms against 3) swayed a sum into a split that left
    this process the busier side."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.blocks = 0
        self.times: dict[Any, list[float]] = {}
        self.others: list[float] = []
        self._entered: float | None = None
        self._matched = 0.0

    def block_starts(self) -> None:
        now = self.clock()
        if self._entered is not None and 1 < self.blocks <= MEASURED_BLOCKS:
            self.others.append(now - self._entered - self._matched)  # lines, reading, writing
        self._entered, self._matched = now, 0.0
        self.blocks += 1

    @property
    def measured(self) -> bool:
        """True for exactly one block: the first after the measured ones."""
        return self.blocks == MEASURED_BLOCKS + 1

    @property
    def costs(self) -> dict[Any, float]:
        """Each clustering's median time a block."""
        return {key: float(np.median(times)) for key, times in self.times.items()}

    @property
    def fixed(self) -> float:
        """This process's median time a block besides matching."""
        return float(np.median(self.others)) if self.others else 0.0

    @contextlib.contextmanager
    def timing(self, key: Any) -> Iterator[None]:
        if not 1 < self.blocks <= MEASURED_BLOCKS:
            yield
            return
        start = self.clock()
        yield
        took = self.clock() - start
        self.times.setdefault(key, []).append(took)
        self._matched += took


def split_clusterings(costs: dict[Any, float], fixed: float, slowdown: float) -> list[Any]:
    """The clusterings to hand to the helper: largest first, each moved while that lowers the
    busier side's load (this process: ``fixed`` plus what it keeps; the helper: ``slowdown``
    times what it takes). Empty when nothing is worth a process."""
    here, there = fixed + sum(costs.values()), 0.0
    moved = []
    for key, cost in sorted(costs.items(), key=lambda item: (-item[1], str(item[0]))):
        if max(here - cost, there + slowdown * cost) < max(here, there):
            here, there = here - cost, there + slowdown * cost
            moved.append(key)
    return moved


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
