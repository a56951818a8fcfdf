"""Scrambled twins of contract v0.1.0 runs, streamed in flat memory, in the bytes of the
event-by-event writer.

The source is checked in a forked process while the twin is written (a scramble keeps every rule
the checks enforce, so the twin is not validated again; nothing takes its name unless the
source passes). Lines are decoded once and written in the contract's byte format (sorted keys,
default separators, ASCII escapes, floats as Python's ``repr``) by templates of the v0.1.0 layer
and event fields: float lists are encoded by msgspec, whose text equals ``repr`` for every
probability from 1e-4 to 1 and for 0 (smaller ones are written with ``repr``). An event or layer
with any other field, or any integer where a float column would make the event-by-event
scramble write a float, is left to that scramble (``Unusual``), so the bytes never differ.

``tokens``: the first pass writes every layer entry's encoded text to a spill file per layer
(its offsets kept, 8 bytes an entry) and each event's text around its layers to another; the
second pass assembles each event from its own text and the permuted entries, read back by
offset. ``experts``: one pass.
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np

from .bundle.lines import iter_lines
from .bundle.loader import ValidationBeside
from .bundle.reader import RunReader
from .bundle.writer import write_prepared_bundle

LAYER_KEYS = frozenset(
    (
        "entropy",
        "layer_index",
        "layer_kind",
        "normalized_entropy",
        "num_active_experts",
        "num_total_experts",
        "router_probs",
        "top1_prob",
        "top1_top2_margin",
        "topk_indices",
        "topk_probs",
    )
)
EVENT_KEYS = frozenset(
    (
        "context_length",
        "event_type",
        "layers",
        "run_id",
        "schema_version",
        "timing_ms",
        "token_id",
        "token_index",
        "token_text",
    )
)
FLOAT_LISTS = ("router_probs", "topk_probs")
FLOAT_SCALARS = ("entropy", "normalized_entropy", "top1_prob", "top1_top2_margin")
_ENCODE = msgspec.json.Encoder()
_SORTED = msgspec.json.Encoder(order="sorted")
_DECODE = msgspec.json.Decoder()
_dumps = json.dumps
_NUMBER_TYPES = frozenset((int, float))
_KEY_ES = _SORTED.encode({key: "moe" if key == "layer_kind" else 0 for key in LAYER_KEYS}).count(b"e")


class Unusual(Exception):
    """The run holds something the templates do not write as the event-by-event writer would."""


def scramble_v01_fast(
    reader: RunReader,
    manifest: dict[str, Any],
    layout: dict[str, Any],
    out_root: Path,
    variant: str,
    seed: int,
) -> Path:
    """The twin under ``out_root``; Unusual (nothing written) for a run the templates cannot write."""
    check = ValidationBeside(reader.run_dir)
    new_id = manifest["run_id"]
    try:
        return _write(reader, manifest, layout, out_root, variant, seed, new_id, check)
    except Unusual:
        raise
    except Exception:
        check.wait()  # a source that is not clean: its issues, not where the writer stumbled
        raise
    finally:
        check.cancel()


def _write(
    reader: RunReader,
    manifest: dict[str, Any],
    layout: dict[str, Any],
    out_root: Path,
    variant: str,
    seed: int,
    new_id: str,
    check: ValidationBeside,
) -> Path:
    if variant == "experts":
        lines: Iterator[str] = _experts(reader.raw_path, new_id, np.random.default_rng(seed))
        return write_prepared_bundle(out_root, manifest, lines, layout, check.wait)
    with tempfile.TemporaryDirectory(
        prefix=".scramble-", dir=out_root if out_root.is_dir() else None
    ) as spill:
        columns = _Spill(Path(spill))
        columns.gather(reader.raw_path, new_id)  # Unusual before anything is written
        lines = columns.assemble(np.random.default_rng(seed))
        return write_prepared_bundle(out_root, manifest, lines, layout, check.wait)


def _experts(path: Path, new_id: str, rng: np.random.Generator) -> Iterator[str]:
    for line in iter_lines(path):
        event = _DECODE.decode(line.data) if line.data is not None else None
        if not isinstance(event, dict) or event.keys() != EVENT_KEYS:
            raise Unusual
        texts = []
        for layer in event["layers"]:
            if not isinstance(layer, dict) or layer.keys() != LAYER_KEYS:
                raise Unusual
            probs, picks = layer["router_probs"], layer["topk_indices"]
            new_label = rng.permutation(len(probs))  # expert i is called new_label[i]
            labels = new_label.tolist()
            layer["router_probs"] = [probs[i] for i in np.argsort(new_label).tolist()]
            layer["topk_indices"] = [labels[i] for i in picks]
            texts.append(layer_text(layer))
        event["run_id"] = new_id
        head, tail = _around_layers(event)
        yield f"{head}[{', '.join(texts)}]{tail}\n"


class _Spill:
    """Layer entries' texts, a file per layer index, and each event's text around its layers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[int, BinaryIO] = {}
        self.offsets: dict[int, array[int]] = {}  # 8 bytes an entry
        self.sizes: dict[int, int] = {}
        self.events = (folder / "events").open("w+b")
        self.event_offsets = array("q", [0])
        self.layer_orders: list[tuple[int, ...]] = []

    def gather(self, path: Path, new_id: str) -> None:
        orders: dict[tuple[int, ...], tuple[int, ...]] = {}
        for line in iter_lines(path):
            event = _DECODE.decode(line.data) if line.data is not None else None
            if not isinstance(event, dict) or event.keys() != EVENT_KEYS:
                raise Unusual
            indices = []
            for layer in event["layers"]:
                if not isinstance(layer, dict) or layer.keys() != LAYER_KEYS or _ints_in_floats(layer):
                    raise Unusual
                index = layer["layer_index"]
                text = layer_text(layer).encode("ascii")
                handle = self.files.get(index)
                if handle is None:
                    handle = self.files[index] = (self.folder / f"layer-{len(self.files)}").open("w+b")
                    self.offsets[index], self.sizes[index] = array("q", [0]), 0
                handle.write(text)
                self.sizes[index] += len(text)
                self.offsets[index].append(self.sizes[index])
                indices.append(index)
            event["run_id"] = new_id
            head, tail = _around_layers(event)
            data = f"{head}\0{tail}\n".encode("ascii")
            self.events.write(data)
            self.event_offsets.append(self.event_offsets[-1] + len(data))
            key = tuple(indices)
            self.layer_orders.append(orders.setdefault(key, key))

    def assemble(self, rng: np.random.Generator) -> Iterator[str]:
        """The twin's lines: each event's own text, its layers' entries permuted per layer."""
        for handle in (*self.files.values(), self.events):
            handle.flush()
        permutations = {index: rng.permutation(len(self.offsets[index]) - 1) for index in sorted(self.files)}
        offsets = self.offsets
        readers = {index: _reader(handle) for index, handle in self.files.items()}
        slots = dict.fromkeys(self.files, 0)
        event_offsets = self.event_offsets
        read_event = _reader(self.events)
        for position, order in enumerate(self.layer_orders):
            texts = []
            for index in order:
                row = int(permutations[index][slots[index]])
                slots[index] += 1
                texts.append(readers[index](offsets[index][row], offsets[index][row + 1]))
            own = read_event(event_offsets[position], event_offsets[position + 1])
            head, tail = own.split("\0", 1)
            yield f"{head}[{', '.join(texts)}]{tail}"


def _reader(handle: BinaryIO) -> Callable[[int, int], str]:
    fd = handle.fileno()

    def read(start: int, stop: int) -> str:
        return os.pread(fd, stop - start, start).decode("ascii")

    return read


def _ints_in_floats(layer: dict[str, Any]) -> bool:
    """An integer where the event-by-event token scramble might write a float: it turns a
    column holding both into floats (so any integer there is left to it)."""
    if any(type(layer[key]) is not float for key in FLOAT_SCALARS):
        return True
    return any(set(map(type, layer[key])) - {float} for key in FLOAT_LISTS)


def layer_text(layer: dict[str, Any]) -> str:
    """One layer entry as ``json.dumps(layer, sort_keys=True)`` writes it.

    msgspec writes the same text but for its separators (no spaces) wherever every number lies
    in [1e-4, 1e16) or is 0 (4.7 million values checked against ``repr``): then only the
    separators are widened, which is exact because the one string of a v0.1.0 layer is "moe".
    A number outside that range (``0.0000…`` or an exponent in msgspec's text) takes the
    field-by-field template."""
    if layer.get("layer_kind") == "moe" and layer.keys() == LAYER_KEYS:
        raw = _SORTED.encode(layer)
        # msgspec writes a number below 1e-4 with four leading zeros, and one from 1e16 with an
        # exponent: an "e" more than the keys and "moe" hold (counting is far cheaper than search)
        if raw.count(b"e") == _KEY_ES and b"0.0000" not in raw and b"E" not in raw:
            return raw.decode("ascii").replace(",", ", ").replace(":", ": ")
    return _template_text(layer)


def _template_text(layer: dict[str, Any]) -> str:
    if any(type(layer[k]) not in (int, float) for k in FLOAT_SCALARS):
        raise Unusual
    return (
        f'{{"entropy": {layer["entropy"]!r}, "layer_index": {_int(layer["layer_index"])}, '
        f'"layer_kind": {_dumps(layer["layer_kind"])}, '
        f'"normalized_entropy": {layer["normalized_entropy"]!r}, '
        f'"num_active_experts": {_int(layer["num_active_experts"])}, '
        f'"num_total_experts": {_int(layer["num_total_experts"])}, '
        f'"router_probs": {_numbers(layer["router_probs"])}, "top1_prob": {layer["top1_prob"]!r}, '
        f'"top1_top2_margin": {layer["top1_top2_margin"]!r}, "topk_indices": {_ints(layer["topk_indices"])}, '
        f'"topk_probs": {_numbers(layer["topk_probs"])}}}'
    )


def _int(value: Any) -> str:
    if type(value) is not int:
        raise Unusual
    return str(value)


def _ints(values: Any) -> str:
    if not isinstance(values, list) or any(type(v) is not int for v in values):
        raise Unusual
    return "[" + ", ".join(map(str, values)) + "]"


def _numbers(values: Any) -> str:
    """A list of probabilities as json.dumps writes it."""
    if not isinstance(values, list) or not set(map(type, values)) <= _NUMBER_TYPES:
        raise Unusual
    text = _ENCODE.encode(values).decode("ascii")
    if "0.0000" in text or "e" in text or "E" in text:  # below 1e-4 msgspec writes otherwise
        return "[" + ", ".join(map(repr, values)) + "]"
    return text.replace(",", ", ")


def _around_layers(event: dict[str, Any]) -> tuple[str, str]:
    """The event's text before and after its layers (the keys before "layers" hold no object)."""
    layers = event["layers"]
    event["layers"] = []
    try:
        text = _dumps(event, sort_keys=True, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError):
        raise Unusual from None
    finally:
        event["layers"] = layers
    head, marker, tail = text.partition('"layers": []')
    if not marker:
        raise Unusual
    return head + '"layers": ', tail
