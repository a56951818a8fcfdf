"""Scrambled twins of contract v0.1.0 runs, streamed in flat memory, in the bytes of the
event-by-event writer.

The source is checked in a forked process while the twin is written (a scramble keeps every rule
the checks enforce, so the twin is not validated again; nothing takes its name unless the
source passes).

A layer entry is moved (``tokens``) or edited (``experts``) as text, never decoded and encoded
again, when its text is already the contract's (sorted keys, default separators, ASCII escapes,
floats as Python's ``repr``) or that text with its separators narrowed. Which texts qualify is
learned: the first entry of each shape (its text with every digit, sign and ``e`` deleted; the
points stay) is decoded and written field by field, and the shape is trusted only if that has the
same shape, with a point in every float and none in any integer. Every entry of a trusted shape
that passes a cheap look at its numbers (``_numbers_as_repr``) keeps its text, the first of its
shape included, so what is kept never depends on the order of the run or where it was cut. The
one thing the look cannot tell is a number whose digits ``repr`` would not write (``0.50`` keeps
that text; the float is the same); every writer of the contract writes ``repr``. A line whose
layers have the skeleton of a line of trusted entries is looked at whole (``_Entries.line``). A
line whose layers cannot be cut cleanly is decoded whole and written by templates (float lists
by msgspec where its text equals ``repr``); an event or layer with any other field, or any
integer where a float column would make the event-by-event scramble write a float, is left to
that scramble (``Unusual``), so the bytes never differ.

``tokens``: the first pass keeps, for each layer index, where each entry's text lies (in the
source, or in a spill file for an entry written the careful way; 16 bytes an entry) and each
event's text around its layers in a spill file; the second pass assembles each event from its
own text and the permuted entries, read back by offset. ``experts``: one pass; the expert
permutations of an event are drawn in one call (the same draws as one call per layer).

A run of ``HALVES_FROM_BYTES`` or more is written in two halves where a process may be forked:
each pass of ``tokens`` and the one pass of ``experts`` give their second half to a forked
process (``ForkedCall``), whose output file is appended by the kernel.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Generator, Iterator
from contextlib import closing
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import msgspec
import numpy as np

from .bundle.lines import iter_lines, next_line_start
from .bundle.loader import ValidationBeside
from .bundle.pipe import can_fork_beside
from .bundle.reader import RunReader
from .bundle.writer import append_file, spill_folder, write_prepared_bundle
from .forked_call import ForkedCall
from .jsonfmt import JSONParseError, parse_json_bytes
from .permutations import shuffled_rows

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
_NUMBER_BYTES = b"0123456789-+e"  # a point is kept: where points lie is part of a shape
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
    with ValidationBeside(reader.run_dir, passing=(Unusual,)) as check:
        return _write(reader, manifest, layout, out_root, variant, seed, manifest["run_id"], check)


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
    with spill_folder(out_root, "scramble") as spill:
        if variant == "experts":
            with closing(_experts(reader.raw_path, new_id, np.random.default_rng(seed), spill)) as lines:
                return write_prepared_bundle(out_root, manifest, lines, layout, check.wait)
        with reader.raw_path.open("rb") as source:  # the token scramble reads it back to assemble
            columns = _Spill(spill, source)
            columns.gather_all(reader.raw_path, new_id)  # Unusual before anything is written
            with closing(columns.assemble(np.random.default_rng(seed))) as assembled:
                return write_prepared_bundle(out_root, manifest, assembled, layout, check.wait)


class _Shape(NamedTuple):
    """A known layer shape: whether its separators are narrow, and how many experts its router
    has."""

    narrow: bool
    experts: int


class _Entry(NamedTuple):
    """A layer entry of a line: its byte range, its text if it was written anew (None: the
    source's text, widened if ``narrow``), its router's width and its layer index (read from
    the text only for a known shape, whose keys are in the contract's order)."""

    start: int
    end: int
    written: bytes | None
    narrow: bool
    experts: int
    layer_index: int
    known: bool  # read as a known shape


class _LinePlan(NamedTuple):
    """A line's layers whose shapes are all known: whether their separators are narrow, and
    each one's router width."""

    narrow: bool
    widths: tuple[int, ...]


#: line plans kept at most (a key is the layers' skeleton, a line's length)
MAX_LINE_PLANS = 16


class _Entries:
    """Reads layer entries, using the source's text where its shape is known to be the
    contract's (learned from the first entry of each shape, written anew and compared shape to
    shape).

    A line whose layers' skeleton is that of a line whose every entry was of a known shape has
    entries of the same known shapes (the skeleton keeps every brace), and the cheap look of
    ``_numbers_as_repr`` over all of them is the look at each; such a line is read whole
    (``plan``), with no entry looked at on its own."""

    def __init__(self, integers_refused: bool, indices: bool = True) -> None:
        self.known: dict[bytes, _Shape] = {}
        self.plans: dict[bytes, _LinePlan] = {}
        self.last: tuple[bytes, _LinePlan | None] = (b"", None)
        self.integers_refused = integers_refused  # the token scramble: see _ints_in_floats
        self.indices = indices  # whether a planned line's layer indices are read (-1 where not)

    def line(
        self, line: bytes, head_end: int, ranges: list[tuple[int, int]], tail_start: int
    ) -> list[_Entry] | None:
        """Every layer entry of a line, or None if one is not an entry with the contract's keys."""
        region = line[head_end:tail_start]
        skeleton = region.translate(None, _NUMBER_BYTES)
        last_skeleton, last_plan = self.last
        # the last line's plan is compared byte for byte first (hashing a line's skeleton costs more)
        plan = last_plan if skeleton == last_skeleton else self.plans.get(skeleton)
        if plan is not None and _numbers_as_repr(region, len(ranges)):
            self.last = (skeleton, plan)
            return self._planned(line, ranges, plan)
        found = []
        read = self.read
        for start, end in ranges:
            entry = read(line, start, end)
            if entry is None:
                return None
            found.append(entry)
        narrow = {entry.narrow for entry in found}
        if len(self.plans) < MAX_LINE_PLANS and len(narrow) == 1 and all(entry.known for entry in found):
            self.plans[skeleton] = _LinePlan(narrow.pop(), tuple(entry.experts for entry in found))
        return found

    def _planned(self, line: bytes, ranges: list[tuple[int, int]], plan: _LinePlan) -> list[_Entry]:
        narrow, indices = plan.narrow, self.indices
        return [
            _Entry(start, end, None, narrow, width, _layer_index(line, start) if indices else -1, True)
            for (start, end), width in zip(ranges, plan.widths, strict=True)
        ]

    def read(self, line: bytes, start: int, end: int) -> _Entry | None:
        """The entry at ``line[start:end]``, or None if it is not one with the contract's keys."""
        text = line[start:end]
        skeleton = text.translate(None, _NUMBER_BYTES)
        shape = self.known.get(skeleton)
        if shape is not None and _numbers_as_repr(text):
            return _Entry(start, end, None, shape.narrow, shape.experts, _layer_index(text, 0), True)
        try:
            layer = _DECODE.decode(text)
        except msgspec.DecodeError:
            return None
        if not isinstance(layer, dict) or layer.keys() != LAYER_KEYS:
            return None
        if self.integers_refused and _ints_in_floats(layer):
            raise Unusual
        careful = layer_text(layer).encode("ascii")  # Unusual unless layer_index is an int
        experts, index = len(layer["router_probs"]), layer["layer_index"]
        careful_skeleton = careful.translate(None, _NUMBER_BYTES)
        if skeleton == careful_skeleton:
            narrow = False
        elif _widen(skeleton) == careful_skeleton:
            narrow = True
        else:  # not the contract's text even with its digits aside: written anew
            return _Entry(start, end, careful, False, experts, index, False)
        floats = experts + len(layer["topk_probs"]) + len(FLOAT_SCALARS)
        if _points_where_floats(text, floats) and _numbers_as_repr(text):
            # the contract's text, digits that repr would not write aside: kept as every later
            # entry of this shape is, so what is kept never depends on which entry came first
            self.known.setdefault(skeleton, _Shape(narrow, experts))
            return _Entry(start, end, None, narrow, experts, index, True)
        if text == careful or (narrow and _widen(text) == careful):
            return _Entry(start, end, None, narrow, experts, index, False)
        return _Entry(start, end, careful, False, experts, index, False)


def _layer_index(text: bytes, start: int) -> int:
    """The layer index of the entry of a known shape at ``text[start:]`` (the contract's key
    order: the number after the first ``"layer_index":``)."""
    at = text.find(b'"layer_index":', start) + 14
    return int(text[at : text.find(b",", at)])


#: exponents ``repr`` never writes: without a sign, of one digit, or where it writes no exponent
_NOT_REPR_EXPONENT = re.compile(rb"e\d|e[-+]\d(?!\d)|e-0[0-4]|e\+(?:0|1[0-5](?!\d))")


def _numbers_as_repr(text: bytes, entries: int = 1) -> bool:
    """Whether an entry's numbers are written as ``repr`` writes them, as far as a cheap look
    can tell: no number below 1e-4 without an exponent, every exponent in repr's form, and no
    integer written ``-0`` (the shape deletes signs). Where the points lie, one in every float
    and none in an integer, is part of its shape."""
    if _below_e4(text):
        return False
    if b"-" in text and _MINUS_ZERO.search(text):  # an integer -0 (one byte is memchr)
        return False
    return text.count(b"e") == _KEY_ES * entries or _NOT_REPR_EXPONENT.search(text) is None


#: searched by a regex rather than ``in``: ``bytes.find`` skips on a needle's last byte, and a
#: ``0`` or ``,`` is in every number (a line of 16 layers: 80 -> 43 µs for the whole look)
_POINT_ZEROS = re.compile(rb"\.0000")
_MINUS_ZERO = re.compile(rb"-0[,\]]")


def _below_e4(text: bytes) -> bool:
    """Whether ``0.0000`` occurs in ``text`` (a number below 1e-4 written without an exponent)."""
    return any(m.start() and text[m.start() - 1] == 0x30 for m in _POINT_ZEROS.finditer(text))


def _points_where_floats(text: bytes, floats: int) -> bool:
    """Whether every float of an entry holds a point and no integer does (contract key order)."""
    if text.count(b".") != floats:
        return False
    find, count = text.find, text.count
    kind = find(b'"layer_kind"')
    if count(b".", find(b'"layer_index"'), kind):
        return False
    probs = find(b'"router_probs"', kind)
    if count(b".", find(b'"num_active_experts"', kind), probs):
        return False
    picks = find(b'"topk_indices"', probs)
    return not count(b".", picks, find(b'"topk_probs"', picks))


def _widen(text: bytes) -> bytes:
    """Narrow separators made the contract's (exact: a layer's one string is "moe")."""
    return text.replace(b",", b", ").replace(b":", b": ")


def _cut_layers(line: bytes) -> tuple[int, list[tuple[int, int]], int] | None:
    """(end of the text before the layers' ``[``, each layer entry's byte range, start of the
    text after their ``]``), or None if the layers are not a plain list of flat objects."""
    at = line.find(b'"layers":')
    if at < 0:
        return None
    pos = at + 9
    if line[pos : pos + 1] == b" ":
        pos += 1
    if line[pos : pos + 1] != b"[":
        return None
    head_end = pos
    pos += 1
    ranges: list[tuple[int, int]] = []
    if line[pos : pos + 1] == b"]":
        return head_end, ranges, pos + 1
    find = line.find
    while True:
        if line[pos : pos + 1] != b"{":
            return None
        end = find(b"}", pos) + 1
        if end == 0:
            return None
        ranges.append((pos, end))
        after = line[end : end + 1]
        if after == b"]":
            return head_end, ranges, end + 1
        if after != b",":
            return None
        pos = end + 2 if line[end + 1 : end + 2] == b" " else end + 1


def _event_text(line: bytes, head_end: int, tail_start: int, new_id: str) -> tuple[bytes, bytes] | None:
    """The contract's text of the event before and after its layers, under the new run id, or
    None if the cut was not at the event's own layers."""
    try:
        event = _DECODE.decode(line[:head_end] + b"[]" + line[tail_start:])
    except msgspec.DecodeError:
        return None
    if not isinstance(event, dict) or event.keys() != EVENT_KEYS or event["layers"] != []:
        return None
    event["run_id"] = new_id
    head, tail = _around_layers(event)
    return head.encode("ascii"), tail.encode("ascii")


def _line_parts(line: bytes, entries: _Entries, new_id: str) -> tuple[bytes, bytes, list[_Entry]] | None:
    """(head, tail, layer entries) of a line whose layers can be cut from its text, else None."""
    cut = _cut_layers(line)
    if cut is None:
        return None
    head_end, ranges, tail_start = cut
    found = entries.line(line, head_end, ranges, tail_start)
    if found is None:
        return None
    around = _event_text(line, head_end, tail_start, new_id)
    if around is None:
        return None
    return around[0], around[1], found


def _decoded_event(data: bytes | memoryview | None) -> dict[str, Any]:
    """A whole line decoded as the reader decodes it (the standard library where msgspec refuses,
    as for a lone surrogate escape); Unusual for anything but an event of the contract's keys."""
    try:
        event = parse_json_bytes(bytes(data)) if data is not None else None
    except JSONParseError:
        raise Unusual from None
    if not isinstance(event, dict) or event.keys() != EVENT_KEYS:
        raise Unusual
    for layer in event["layers"]:
        if not isinstance(layer, dict) or layer.keys() != LAYER_KEYS:
            raise Unusual
    return event


#: a run from this size on is written in two halves, the second by a forked process
HALVES_FROM_BYTES = 64 * 1024 * 1024
#: the expert scramble's first half is the larger: the second starts late, counting the first's
#: lines and skipping their draws (about 7% of a half's time at 50,000 tokens, measured)
EXPERTS_FIRST_SHARE = 0.53


def _experts(
    path: Path, new_id: str, rng: np.random.Generator, spill: Path
) -> Generator[bytes | Path, None, None]:
    """The twin's lines. A large run is cut in two at a line: a forked process writes the second
    half to a file, its generator advanced past the draws of the first half (made in bulk, on
    the assumption that every event draws what the first one does); the first half, written
    here, tells whether that held. If not, this process writes the second half itself."""
    split = _split_point(path, EXPERTS_FIRST_SHARE)
    shape = _draw_shape(path) if split is not None else None
    if split is None or shape is None:
        yield from _experts_range(path, new_id, rng, 0, None, _Drawn(None))
        return
    part = spill / "second-half"
    helper = ForkedCall(_experts_second_half, path, split, new_id, rng, shape, part)
    try:
        drawn = _Drawn(shape)
        yield from _experts_range(path, new_id, rng, 0, split, drawn)
        if drawn.uniform:
            try:
                assumed = helper.result()
            except ChildProcessError:  # the helper died: this process writes its half
                assumed = -1
            if assumed == drawn.lines:
                yield part  # its bytes, copied by the kernel
                return
    finally:
        helper.close()
    yield from _experts_range(path, new_id, rng, split, None, _Drawn(None))


def _experts_second_half(
    path: Path, split: int, new_id: str, rng: np.random.Generator, shape: tuple[int, int], part: Path
) -> int:
    """(In the forked process.) The second half written to ``part``; returns the number of lines
    before ``split`` whose draws it skipped."""
    before = _newlines(path, split)
    _skip_draws(rng, before * shape[0], shape[1])
    with part.open("wb", buffering=1 << 20) as out:
        for text in _experts_range(path, new_id, rng, split, None, _Drawn(None)):
            out.write(text)
    return before


class _Drawn:
    """The lines of a range and whether each drew ``shape`` (L permutations of W experts): what
    the forked half assumed when it skipped their draws."""

    def __init__(self, shape: tuple[int, int] | None) -> None:
        self.shape = shape
        self.lines = 0
        self.uniform = shape is not None

    def note(self, layers: int, width: int | None) -> None:
        """One line drew ``layers`` permutations, each of ``width`` experts (None: not all alike)."""
        self.lines += 1
        if self.uniform and (layers, width) != self.shape:
            self.uniform = False


def _worth_halves(size: int) -> bool:
    """Whether a run of ``size`` bytes is written in two halves (two processes)."""
    return size >= HALVES_FROM_BYTES and can_fork_beside()


def _split_point(path: Path, share: float = 0.5) -> int | None:
    """The start of the first line after ``share`` of a run worth two processes, else None."""
    size = path.stat().st_size
    if not _worth_halves(size):
        return None
    with path.open("rb") as handle:
        split = next_line_start(handle, int(size * share))
    return split if split < size else None


def _draw_shape(path: Path) -> tuple[int, int] | None:
    """(layers, experts) of the first event where every layer has one router width, else None."""
    first = next(iter_lines(path), None)
    if first is None or first.data is None:
        return None
    try:
        event = parse_json_bytes(bytes(first.data))
    except JSONParseError:
        return None
    layers = event.get("layers") if isinstance(event, dict) else None
    if not isinstance(layers, list) or not layers:
        return None
    widths = {
        len(v["router_probs"]) if isinstance(v, dict) and isinstance(v.get("router_probs"), list) else -1
        for v in layers
    }
    width = widths.pop()
    return (len(layers), width) if not widths and width > 0 else None


def _newlines(path: Path, stop: int) -> int:
    """How many line ends lie before byte ``stop``."""
    count = 0
    with path.open("rb") as handle:
        while stop > 0 and (chunk := handle.read(min(1 << 24, stop))):
            count += chunk.count(b"\n")
            stop -= len(chunk)
    return count


def _skip_draws(rng: np.random.Generator, rows: int, width: int) -> None:
    """Advance ``rng`` past ``rows`` permutations of ``width`` drawn one after another, in bulk
    (a row-wise shuffle draws the same numbers whatever the rows' type or how many go in a call)."""
    chunk = max(1, (1 << 19) // width)  # 4 MiB of 8-byte labels a call
    while rows > 0:
        count = min(rows, chunk)
        shuffled_rows(rng, count, width)
        rows -= count


def _experts_range(
    path: Path, new_id: str, rng: np.random.Generator, start: int, end: int | None, drawn: _Drawn
) -> Iterator[bytes]:
    entries = _Entries(integers_refused=False, indices=False)
    bases: dict[tuple[int, int], np.ndarray] = {}
    for line in iter_lines(path, start_offset=start, end_offset=end):
        data = bytes(line.data) if line.data is not None else b""
        parts = _line_parts(data, entries, new_id) if line.data is not None else None
        if parts is None:
            yield _experts_decoded(_decoded_event(line.data), new_id, rng, drawn)
            continue
        head, tail, found = parts
        widths = {entry.experts for entry in found}
        if len(widths) == 1:  # one call draws what one call per layer would, in order
            width = widths.pop()
            drawn.note(len(found), width)
            base = bases.get((len(found), width))
            if base is None:
                base = bases[len(found), width] = np.tile(np.arange(width), (len(found), 1))
            drawn_labels = rng.permuted(base, axis=1)
            new_labels, places = drawn_labels.tolist(), np.argsort(drawn_labels, axis=1).tolist()
        else:
            drawn.note(len(found), None)
            each = [rng.permutation(entry.experts) for entry in found]
            new_labels, places = [d.tolist() for d in each], [np.argsort(d).tolist() for d in each]
        if found and all(entry.narrow and entry.written is None for entry in found):  # widened once
            texts = [
                _relabelled(data[entry.start : entry.end], labels, place, _NARROW)
                for entry, labels, place in zip(found, new_labels, places, strict=True)
            ]
            layers = _widen(b",".join(texts))
        else:
            texts = []
            for entry, labels, place in zip(found, new_labels, places, strict=True):
                text = entry.written or data[entry.start : entry.end]
                texts.append(_relabelled(_widen(text) if entry.narrow else text, labels, place, _WIDE))
            layers = b", ".join(texts)
        yield b"".join((head, b"[", layers, b"]", tail, b"\n"))


class _Separators(NamedTuple):
    between: bytes
    probs: bytes  # the key and the list's opening
    picks: bytes


_WIDE = _Separators(b", ", b'"router_probs": [', b'"topk_indices": [')
_NARROW = _Separators(b",", b'"router_probs":[', b'"topk_indices":[')


class _Indices(dict[bytes, int]):
    """An expert id's text to its number, a table for the usual ones and ``int`` for the rest."""

    def __missing__(self, text: bytes) -> int:
        return int(text)


_NAMES = [b"%d" % n for n in range(1024)]
_INDEX = _Indices((name, n) for n, name in enumerate(_NAMES))


def _relabelled(text: bytes, labels: list[int], place: list[int], separators: _Separators) -> bytes:
    """A layer entry (the contract's text, or that text with narrow separators) with expert i
    called labels[i] (``place`` is its inverse: new label j is old expert place[j])."""
    between = separators.between
    probs = text.find(separators.probs) + len(separators.probs)
    probs_end = text.find(b"]", probs)
    if len(place) > 1:  # (itemgetter of one key gives the item, not a tuple)
        moved = between.join(itemgetter(*place)(text[probs:probs_end].split(between)))
    else:
        moved = text[probs:probs_end]
    picks = text.find(separators.picks, probs_end) + len(separators.picks)
    picks_end = text.find(b"]", picks)
    if picks_end > picks:
        names = _NAMES if len(labels) <= len(_NAMES) else [b"%d" % n for n in range(len(labels))]
        renamed = between.join([names[labels[_INDEX[i]]] for i in text[picks:picks_end].split(between)])
    else:
        renamed = b""
    return b"".join((text[:probs], moved, text[probs_end:picks], renamed, text[picks_end:]))


def _experts_decoded(event: dict[str, Any], new_id: str, rng: np.random.Generator, drawn: _Drawn) -> bytes:
    widths = {len(layer["router_probs"]) for layer in event["layers"]}
    drawn.note(len(event["layers"]), widths.pop() if len(widths) == 1 else None)
    texts = []
    for layer in event["layers"]:
        probs, picks = layer["router_probs"], layer["topk_indices"]
        new_label = rng.permutation(len(probs))  # expert i is called new_label[i]
        labels = new_label.tolist()
        layer["router_probs"] = [probs[i] for i in np.argsort(new_label).tolist()]
        layer["topk_indices"] = [labels[i] for i in picks]
        texts.append(layer_text(layer))
    event["run_id"] = new_id
    head, tail = _around_layers(event)
    return f"{head}[{', '.join(texts)}]{tail}\n".encode("ascii")


class _Spill:
    """Where each layer entry's text lies, per layer index: in the source (``starts`` >= 0; a
    negative length: widen it) or in the spill file (``starts`` = -1 - offset); and each event's
    text around its layers."""

    def __init__(self, folder: Path, source: BinaryIO, name: str = "") -> None:
        self.folder = folder
        self.source = source
        self.starts: dict[int, array[int]] = {}
        self.lengths: dict[int, array[int]] = {}
        self.written = (folder / f"layers{name}").open("w+b")
        self.written_size = 0
        self.events = (folder / f"events{name}").open("w+b")
        self.event_offsets = array("q", [0])
        self.layer_orders: list[tuple[int, ...]] = []

    def gather_all(self, path: Path, new_id: str) -> None:
        """Every line gathered; a large run in two halves, the second by a forked process."""
        split = _split_point(path)
        if split is None:
            self.gather(path, new_id, 0, None)
            return
        helper = ForkedCall(_gather_half, self.folder, path, new_id, split)
        try:
            self.gather(path, new_id, 0, split)
            half = helper.result()
        except ChildProcessError:  # the helper died: this process gathers its half
            half = None
        finally:
            helper.close()
        if half is None:
            self.gather(path, new_id, split, None)
        else:
            self._append(half)

    def _append(self, half: dict[str, Any]) -> None:
        """The forked half's columns after this one's (its spilled texts moved to this file)."""
        shift = self.written_size
        for index, starts in half["starts"].items():
            self._column(index)
            self.starts[index].extend(s if s >= 0 else s - shift for s in starts)
            self.lengths[index].extend(half["lengths"][index])
        for handle, name in ((self.written, "layers"), (self.events, "events")):
            handle.seek(0, os.SEEK_END)
            append_file(handle, self.folder / f"{name}-half")
        self.written_size += half["written_size"]
        base = self.event_offsets[-1]
        self.event_offsets.extend(base + offset for offset in half["event_offsets"][1:])
        self.layer_orders.extend(half["layer_orders"])

    def gather(self, path: Path, new_id: str, first: int, last: int | None) -> None:
        orders: dict[tuple[int, ...], tuple[int, ...]] = {}
        entries = _Entries(integers_refused=True)
        for line in iter_lines(path, start_offset=first, end_offset=last):
            data = bytes(line.data) if line.data is not None else b""
            parts = _line_parts(data, entries, new_id) if line.data is not None else None
            if parts is None:
                indices, head, tail = self._decoded(_decoded_event(line.data), new_id)
            else:
                head, tail, found = parts
                indices = []
                for start, end, written, narrow, _experts, index, _known in found:
                    if written is not None:
                        self._spilled(index, written)
                    else:
                        self._column(index)
                        self.starts[index].append(line.start + start)
                        self.lengths[index].append(start - end if narrow else end - start)
                    indices.append(index)
            data_out = b"".join((head, b"\0", tail, b"\n"))
            self.events.write(data_out)
            self.event_offsets.append(self.event_offsets[-1] + len(data_out))
            key = tuple(indices)
            self.layer_orders.append(orders.setdefault(key, key))

    def _column(self, index: int) -> None:
        if index not in self.starts:
            self.starts[index], self.lengths[index] = array("q"), array("q")

    def _spilled(self, index: int, text: bytes) -> None:
        self._column(index)
        self.starts[index].append(-1 - self.written_size)
        self.lengths[index].append(len(text))
        self.written.write(text)
        self.written_size += len(text)

    def _decoded(self, event: dict[str, Any], new_id: str) -> tuple[list[int], bytes, bytes]:
        indices = []
        for layer in event["layers"]:
            if _ints_in_floats(layer):
                raise Unusual
            index = layer["layer_index"]
            self._spilled(index, layer_text(layer).encode("ascii"))
            indices.append(index)
        event["run_id"] = new_id
        head, tail = _around_layers(event)
        return indices, head.encode("ascii"), tail.encode("ascii")

    def assemble(self, rng: np.random.Generator) -> Generator[bytes | Path, None, None]:
        """The twin's lines: each event's own text, its layers' entries permuted per layer. A
        large run's second half is written by a forked process (a Path: its file)."""
        for handle in (self.written, self.events):
            handle.flush()
        permutations = {index: rng.permutation(len(self.starts[index])) for index in sorted(self.starts)}
        count = len(self.layer_orders)
        half = count // 2
        if count < 2 or not _worth_halves(os.fstat(self.source.fileno()).st_size):
            yield from self.lines(permutations, 0, count)
            return
        part = self.folder / "second-half"
        helper = ForkedCall(_assemble_half, self, permutations, half, part)
        written: Path | None = part
        try:
            yield from self.lines(permutations, 0, half)
            helper.result()
        except ChildProcessError:  # the helper died: this process writes its half
            written = None
        finally:
            helper.close()
        if written is None:
            yield from self.lines(permutations, half, count)
        else:
            yield written  # its bytes, copied by the kernel

    def lines(self, permutations: dict[int, np.ndarray], first: int, stop: int) -> Iterator[bytes]:
        """The twin's lines of events ``first`` to ``stop``."""
        starts, lengths = self.starts, self.lengths
        slots = dict.fromkeys(self.starts, 0)
        for order in self.layer_orders[:first]:
            for index in order:
                slots[index] += 1
        event_offsets = self.event_offsets
        pread, source = os.pread, self.source.fileno()
        written, events = self.written.fileno(), self.events.fileno()
        for position in range(first, stop):
            order = self.layer_orders[position]
            texts, narrow = [], []
            for index in order:
                row = int(permutations[index][slots[index]])
                slots[index] += 1
                start, length = starts[index][row], lengths[index][row]
                if start < 0:
                    texts.append(pread(written, length, -1 - start))
                else:
                    texts.append(pread(source, abs(length), start))
                narrow.append(start >= 0 and length < 0)
            if all(narrow):  # the usual line: widened once
                layers = _widen(b",".join(texts))
            else:
                layers = b", ".join([_widen(t) if n else t for t, n in zip(texts, narrow, strict=True)])
            begin, end = event_offsets[position], event_offsets[position + 1]
            head, tail = pread(events, end - begin, begin).split(b"\0", 1)
            yield b"".join((head, b"[", layers, b"]", tail))


def _gather_half(folder: Path, path: Path, new_id: str, split: int) -> dict[str, Any]:
    """(In the forked process.) The second half gathered; its columns (spilled texts in files)."""
    with path.open("rb") as source:
        half = _Spill(folder, source, "-half")
        half.gather(path, new_id, split, None)
        half.written.close()
        half.events.close()
    return {
        "starts": half.starts,
        "lengths": half.lengths,
        "written_size": half.written_size,
        "event_offsets": half.event_offsets,
        "layer_orders": half.layer_orders,
    }


def _assemble_half(spill: _Spill, permutations: dict[int, np.ndarray], first: int, part: Path) -> None:
    """(In the forked process.) The twin's lines from event ``first`` on, written to ``part``."""
    with part.open("wb", buffering=1 << 20) as out:
        for text in spill.lines(permutations, first, len(spill.layer_orders)):
            out.write(text)


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
