"""A v0.1.0 raw trace's routing read a block of events at a time, in file order, in flat memory.

The file is cut at line boundaries into blocks of about ``BLOCK_BYTES``; forked workers decode
alternate blocks (a typed decode of the routing fields only: token id, layer index, router
probabilities, top-k indices) into arrays, and this process receives them in file order. A
worker is at most one block ahead (the pipe holds it back), so memory is a few blocks whatever
the length of the run. Where workers cannot be forked (another thread is running, not Linux),
the blocks are decoded here, one after the other: the same arrays, only slower.

An event that is not the block's common shape (unreadable, another layer set or expert count,
out-of-range or repeated values) is marked ``regular = False``; callers read those few through
``RunReader`` exactly as before, so odd bundles are treated as they always were.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import numpy as np

from ..jsonfmt import DECODE_FAILURES
from .lines import iter_lines, split_points
from .pipe import can_fork, forked_child, usable_cores

BLOCK_BYTES = 8 * 1024 * 1024


class _Layer(msgspec.Struct, gc=False):
    layer_index: int
    router_probs: list[float]
    topk_indices: list[int]


class _Event(msgspec.Struct, gc=False):
    token_id: int | None = None
    layers: list[_Layer] = []


class _TextEvent(_Event, gc=False):
    token_index: Any = None
    token_text: Any = None


_DECODER = ROUTING_DECODER = msgspec.json.Decoder(_Event)  # the fields compare reads, the rest skipped
_TEXT_DECODER = msgspec.json.Decoder(_TextEvent)  # derive also needs each token's index and text


@dataclass(slots=True)
class RoutingBlock:
    """Events ``start .. start + count - 1``; the arrays hold every event, meaningful where
    ``regular`` (the block's common layers and shapes, finite values, top-k ids in range)."""

    start: int
    count: int
    token_ids: list[Any]  # per event; None where the typed decode failed
    layers: tuple[int, ...]  # the layer indices of the columns, in the events' order
    regular: np.ndarray  # [count] bool
    probs: np.ndarray  # [count, L, E] float64
    topk: np.ndarray  # [count, L, k] int64
    token_indices: list[Any] = field(default_factory=list)  # per event, as decoded (None: failed)
    token_texts: list[Any] = field(default_factory=list)

    def window(self, first: int, stop: int) -> RoutingBlock:
        """Events ``first .. stop - 1`` (absolute positions) of this block."""
        a, b = first - self.start, stop - self.start
        return RoutingBlock(
            first,
            b - a,
            self.token_ids[a:b],
            self.layers,
            self.regular[a:b],
            self.probs[a:b],
            self.topk[a:b],
            self.token_indices[a:b],
            self.token_texts[a:b],
        )


def decode_range(
    path: Path, start: int, end: int | None, position: int = 0, with_text: bool = False
) -> RoutingBlock:
    """The events in bytes ``[start, end)`` of ``path``, the first at event ``position``;
    ``with_text``: also each event's token_index and token_text (decoding them costs time)."""
    decoder = _TEXT_DECODER if with_text else _DECODER
    token_ids: list[Any] = []
    token_indices: list[Any] = []
    token_texts: list[Any] = []
    regular: list[bool] = []
    floats: list[float] = []
    ints: list[int] = []
    shape: tuple[tuple[int, ...], int, int] | None = None
    for line in iter_lines(path, start_offset=start, end_offset=end):
        event = _decode(line.data, decoder)
        token_ids.append(None if event is None else event.token_id)
        if with_text:
            token_indices.append(None if event is None else event.token_index)
            token_texts.append(None if event is None else event.token_text)
        layers = [] if event is None else event.layers
        key = _shape(layers)
        if key is not None and shape is None:
            shape = key
        if key is None or key != shape:
            regular.append(False)
            continue
        regular.append(True)
        for layer in layers:
            floats += layer.router_probs
            ints += layer.topk_indices
    count = len(token_ids)
    columns, experts, k = shape if shape is not None else ((), 0, 0)
    mask = np.array(regular, dtype=bool)
    every = count > 0 and bool(mask.all())  # the usual block: the arrays are made as they are
    probs = np.zeros((0 if every else count, len(columns), experts), dtype=np.float64)
    topk = np.zeros((0 if every else count, len(columns), k), dtype=np.int64)
    if mask.any():
        values = np.array(floats, dtype=np.float64).reshape(-1, len(columns), experts)
        if every:
            probs = values
        else:
            probs[mask] = values
        try:
            picks = np.array(ints, dtype=np.int64).reshape(-1, len(columns), k)
            if every:
                topk = picks
            else:
                topk[mask] = picks
        except OverflowError:  # an id past int64: every row of the block goes the careful way
            mask[:] = False
            topk = np.zeros((count, len(columns), k), dtype=np.int64)
        sound = np.isfinite(probs).all(axis=(1, 2)) & ((topk >= 0) & (topk < experts)).all(axis=(1, 2))
        ordered = np.sort(topk, axis=-1)
        sound &= ~(np.diff(ordered, axis=-1) == 0).any(axis=(1, 2))  # repeated ids: the careful way
        mask &= sound
    return RoutingBlock(position, count, token_ids, columns, mask, probs, topk, token_indices, token_texts)


def _decode(data: bytes | memoryview | None, decoder: Any = _DECODER) -> Any:
    if data is None:
        return None
    try:
        return decoder.decode(data)
    except DECODE_FAILURES:
        return None


def _shape(layers: list[_Layer]) -> tuple[tuple[int, ...], int, int] | None:
    """(layer indices, experts, k) when every layer has the same lengths and the indices differ."""
    if not layers:
        return None
    experts, k = len(layers[0].router_probs), len(layers[0].topk_indices)
    if experts == 0 or k == 0:
        return None
    for layer in layers:
        if len(layer.router_probs) != experts or len(layer.topk_indices) != k:
            return None
    indices = tuple(layer.layer_index for layer in layers)
    if len(set(indices)) != len(indices):
        return None
    return indices, experts, k


def routing_blocks(
    path: Path, *, workers: int | None = None, block_bytes: int | None = None, with_text: bool = False
) -> Iterator[RoutingBlock]:
    """Every event of the raw trace ``path``, a block at a time, in file order."""
    decode = functools.partial(decode_range, with_text=True) if with_text else decode_range
    return ordered_blocks(path, decode, workers=workers, block_bytes=block_bytes)


class Block(Protocol):
    """What ``ordered_blocks`` needs of a decoded block: its first event and its event count."""

    start: int
    count: int


B = TypeVar("B", bound=Block)


def ordered_blocks(
    path: Path,
    decode: Callable[[Path, int, int | None, int], B],
    *,
    workers: int | None = None,
    block_bytes: int | None = None,
) -> Iterator[B]:
    """``decode(path, start_byte, end_byte, first_event)`` of every block of ``path``, in file
    order; forked workers decode alternate blocks (each at most one block ahead)."""
    size = path.stat().st_size
    block_bytes = block_bytes or BLOCK_BYTES
    cuts = split_points(path, max(1, -(-size // block_bytes))) if size else [0, 0]
    ranges = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    if workers is None:
        workers = usable_cores()
    if workers <= 1 or len(ranges) <= 1 or not can_fork():
        position = 0
        for a, b in ranges:
            block = decode(path, a, b, position)
            position += block.count
            yield block
        return
    yield from _forked_blocks(path, decode, ranges, min(workers, len(ranges)))


def _forked_blocks(
    path: Path, decode: Callable[[Path, int, int | None, int], B], ranges: list[tuple[int, int]], workers: int
) -> Iterator[B]:
    ctx = multiprocessing.get_context("fork")
    pipes, processes = [], []
    for number in range(workers):
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_worker, args=(sender, path, decode, ranges[number::workers]), daemon=True
        )
        process.start()
        sender.close()
        pipes.append(receiver)
        processes.append(process)
    position = 0
    try:
        for number, (a, b) in enumerate(ranges):
            pipe = pipes[number % workers]
            try:
                outcome = pipe.recv()
            except EOFError:
                outcome = None
            if isinstance(outcome, BaseException) or outcome is None:  # a lost worker: its block here
                outcome = decode(path, a, b, position)
            outcome.start = position
            position += outcome.count
            yield outcome
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        for pipe in pipes:
            pipe.close()


def _worker(conn: Any, path: Path, decode: Callable[..., Any], ranges: list[tuple[int, int]]) -> None:
    with forked_child(conn):
        for a, b in ranges:
            conn.send(decode(path, a, b, 0))


def aligned(
    a: Iterator[RoutingBlock], b: Iterator[RoutingBlock], lengths: list[int]
) -> Iterator[tuple[RoutingBlock, RoutingBlock]]:
    """Pairs of windows covering the same events of two block streams while both have events;
    at the end ``lengths`` holds the number of events of each stream (both read to their end)."""
    left, right = next(a, None), next(b, None)
    ends = [0, 0]
    while left is not None and right is not None:
        ends = [max(ends[0], left.start + left.count), max(ends[1], right.start + right.count)]
        start = max(left.start, right.start)
        stop = min(left.start + left.count, right.start + right.count)
        if stop > start:
            yield left.window(start, stop), right.window(start, stop)
        if left.start + left.count <= stop:
            left = next(a, None)
        if right.start + right.count <= stop:
            right = next(b, None)
    for number, (block, rest) in enumerate(((left, a), (right, b))):
        if block is not None:
            ends[number] = max(ends[number], block.start + block.count)
        ends[number] += sum(more.count for more in rest) if block is not None else 0
    lengths[:] = ends
