"""What derive reads, a block of tokens at a time: token index, token text, and per MoE layer a
distribution over experts (contract v0.1.0: ``router_probs`` as stored; v0.2: the scores as a
distribution by their function's definition, as ``LayerEvent.distribution`` gives it).

Every token of a block carries the same layers (ascending ``layer_index``). A run where tokens
differ in their layers, or where a layer is routed at two sites, cannot be matched a block at a
time: ``Irregular`` is raised and derive goes through the run token by token instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from .bundle.blocks import routing_blocks
from .bundle.lines import line_chunks
from .bundle.reader import RunReader
from .jsonfmt import DECODE_FAILURES

BLOCK_TOKENS = 128  # measured: smaller blocks pay more per call, larger ones more per round


class Irregular(Exception):
    """The run cannot be read a block at a time (derive reads it token by token)."""


class NoDistribution(ValueError):
    """A v0.2 layer without a score distribution to derive motifs from (one line: where, why)."""


@dataclass(slots=True)
class InputBlock:
    """Tokens of one block: ``tokens`` ``[B]`` token_index, ``texts``, and ``layers``: layer index
    to ``[B, E]`` float64 distributions, in ascending layer order."""

    tokens: np.ndarray
    texts: list[str]
    layers: dict[int, np.ndarray]


def blocks_from_events(events: Iterable[dict[str, Any]]) -> Iterator[InputBlock]:
    """Blocks of loaded raw events (the original API's ``raw_events``)."""
    iterator = iter(events)
    while chunk := list(itertools.islice(iterator, BLOCK_TOKENS)):
        yield _block_of_events(chunk)


def _block_of_events(chunk: list[dict[str, Any]]) -> InputBlock:
    layers: dict[int, list[Any]] = {}
    shape: tuple[tuple[int, int], ...] | None = None
    for event in chunk:
        entries = sorted(event["layers"], key=lambda la: la["layer_index"])
        key = tuple((la["layer_index"], len(la["router_probs"])) for la in entries)
        if shape is None:
            shape = key
            layers = {index: [] for index, _ in key}
        if key != shape or len(set(layers)) != len(key):
            raise Irregular
        for entry in entries:
            layers[entry["layer_index"]].append(entry["router_probs"])
    return InputBlock(
        np.array([e["token_index"] for e in chunk], dtype=np.int64),
        [e["token_text"] for e in chunk],
        {index: np.asarray(rows, dtype=np.float64) for index, rows in layers.items()},
    )


def reader_blocks(reader: RunReader) -> Iterator[InputBlock]:
    """Blocks of a valid bundle, read from the raw trace's routing blocks (v0.1.0, decoded in
    forked workers) or from the array files (v0.2)."""
    if reader.profile == "v0.2":
        yield from _v02_blocks(reader)
        return
    for block in routing_blocks(reader.raw_path, with_text=True):
        for first in range(0, block.count, BLOCK_TOKENS):
            part = block.window(block.start + first, block.start + min(block.count, first + BLOCK_TOKENS))
            yield _v01_block(reader, part)


def _v01_block(reader: RunReader, part: Any) -> InputBlock:
    order = np.argsort(np.asarray(part.layers, dtype=np.int64), kind="stable")
    columns = [part.layers[i] for i in order]
    probs = part.probs[:, order, :] if part.layers else part.probs
    # unpickled from a decoder, the block's dtype is equal to float64 but not numpy's own object,
    # and numpy's in-order add (the motifs' sums) then takes a path about 25 times slower
    probs = probs.view(np.float64)
    tokens = list(part.token_indices)
    texts = list(part.token_texts)
    if not part.regular.all():  # the few odd events, read as the reader reads them
        probs = probs.copy()
        for slot in np.nonzero(~part.regular)[0]:
            event = reader.event(part.start + int(slot))
            entries = sorted(event["layers"], key=lambda la: la["layer_index"])
            if [la["layer_index"] for la in entries] != columns or any(
                len(la["router_probs"]) != probs.shape[2] for la in entries
            ):
                raise Irregular
            probs[slot] = [la["router_probs"] for la in entries]
            tokens[slot], texts[slot] = event["token_index"], event["token_text"]
    if not columns:
        raise Irregular
    return InputBlock(
        np.asarray(tokens, dtype=np.int64),
        texts,
        {index: np.ascontiguousarray(probs[:, slot, :]) for slot, index in enumerate(columns)},
    )


class _TokenMeta(msgspec.Struct, gc=False):
    token_index: Any = None
    token_text: Any = None


_META = msgspec.json.Decoder(_TokenMeta)


def _v02_meta(
    reader: RunReader, size: int, chunk_bytes: int = 4 << 20
) -> Iterator[tuple[list[Any], list[Any]]]:
    """(token_index, token_text) of the token lines ``size`` at a time, as two lists, in order
    (a valid run's lines all decode; a chunk's lines are decoded in one call)."""
    indices: list[Any] = []
    texts: list[Any] = []
    for block in line_chunks(reader.raw_path, chunk_bytes):
        if not block.strip():
            continue
        try:
            decoded = _META.decode_lines(block)
        except DECODE_FAILURES as exc:
            raise Irregular from exc
        indices += [meta.token_index for meta in decoded]
        texts += [meta.token_text for meta in decoded]
        whole = len(indices) - len(indices) % size
        for start in range(0, whole, size):
            yield indices[start : start + size], texts[start : start + size]
        del indices[:whole], texts[:whole]
    if indices:
        yield indices, texts


def _v02_blocks(reader: RunReader) -> Iterator[InputBlock]:
    routing = reader.routing
    if routing is None:
        raise Irregular
    sidecar = reader.sidecar()
    seen: set[int] = set()
    for group in routing.groups:
        if seen & set(group.layers):  # a layer routed at two sites
            raise Irregular
        seen |= set(group.layers)
    start = 0
    for indices, texts in _v02_meta(reader, BLOCK_TOKENS):
        stop = start + len(indices)
        layers: dict[int, np.ndarray] = {}
        bad: list[tuple[int, int, str]] = []  # (row, layer, score function) without a distribution
        for group in routing.groups:
            scores = sidecar.rows(group, "scores", start, stop) if "scores" in group.arrays else None
            if scores is None:
                bad += [(0, layer, group.score_function) for layer in group.layers]
                continue
            shares, fine = distributions(scores.astype(np.float64), group.score_function)
            for slot, layer in enumerate(group.layers):
                layers[layer] = np.ascontiguousarray(shares[:, slot, :])
                rows = np.nonzero(~fine[:, slot])[0]
                if rows.size:
                    bad.append((int(rows[0]), layer, group.score_function))
        if bad:
            row, layer, function = min(bad)
            token = indices[row]
            raise NoDistribution(
                f"token {token}, layer {layer}: no scores recorded ({function}); motifs are derived "
                "from the score distribution"
            )
        yield InputBlock(
            np.array(indices, dtype=np.int64),
            [text or "" for text in texts],
            dict(sorted(layers.items())),
        )
        start = stop


def distributions(scores: np.ndarray, function: str) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's distribution as ``LayerEvent.distribution`` defines it, and which cells
    ``[n, C]`` have one (finite scores; a positive sum for sigmoid-like scores)."""
    finite = np.isfinite(scores).all(axis=-1) & (scores.shape[-1] > 0)
    if function == "logits":
        with np.errstate(invalid="ignore", over="ignore"):
            z = np.exp(scores - scores.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True), finite
    if function in ("sigmoid", "sqrt_softplus"):
        total = scores.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = scores / total
        return share, finite & (total[..., 0] > 0)
    if function == "softmax":
        return scores, finite
    return scores, np.zeros(scores.shape[:2], dtype=bool)
