"""Scrambled twins of contract v0.2 runs, made in the array files and written as v0.2 bundles.

``tokens``: per MoE layer, one seeded permutation of the tokens moves that layer's rows (its
selection, weights and scores together), so every row keeps the router's rule. ``experts``:
expert labels are permuted, the selection, scores and bias relabelled together; for
group-limited rules whole groups move (and positions within groups), so the twin still obeys its
declared rule. A router with a selection bias has one bias vector per layer, so its labels are
permuted once per layer; without a bias, independently for every token and layer (as for
contract v0.1.0). Prompt (prefill) arrays are not carried: a twin scrambles the events.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .arrays.buffers import AlignedBuffer
from .bundle.lines import line_blocks
from .bundle.pipe import can_fork_beside, forked_child
from .bundle.reader import RunReader
from .bundle.writer import spill_folder
from .bundle.writer_v02 import RunWriter
from .direct_spill import SpillFile
from .forked_call import stop as stop_helper
from .jsonfmt import parse_json_bytes
from .permutations import shuffled_rows
from .routing import PROMPT_ROLES, RoutingGroup

BLOCK_TOKENS = 1024
BUCKET_TOKENS = 8_192  # the token scramble's output rows per spill bucket
READERS = 3  # a bucket's pieces read at once
MEANING = {
    "tokens": "each MoE layer's rows (selection, weights, scores) shuffled across tokens "
    "(per-layer permutation)",
    "experts": "expert labels permuted (whole groups for group-limited rules; once per layer for a biased "
    "router, else for every token and layer)",
}


def _labels(rng: np.random.Generator, rows: int, group: RoutingGroup) -> np.ndarray:
    """``[rows, E]``: the new label of every expert, one permutation per row."""
    e = group.num_experts
    sel = group.selection
    if sel.rule == "group_limited_topk" and sel.n_group:
        per = e // sel.n_group
        groups = shuffled_rows(rng, rows, sel.n_group)
        within = shuffled_rows(rng, rows, per)
        experts = np.arange(e)
        labels: np.ndarray = groups[:, experts // per] * per + within[:, experts % per]
        return labels
    return shuffled_rows(rng, rows, e)


def scramble_v02(
    reader: RunReader,
    manifest: dict[str, Any],
    out_root: Path,
    variant: str,
    seed: int,
    new_id: str,
    verify: Callable[[], None] | None = None,
) -> Path:
    """The twin under ``out_root``. ``verify`` checks the source (it raises if the source is not
    clean); without it the twin is validated whole before it takes its name."""
    assert reader.routing is not None
    rng = np.random.default_rng(seed)
    sidecar = reader.sidecar()
    count = reader.count()  # the lines are read in order below: no index needed
    groups = []
    for raw in manifest["routing"]["groups"]:
        raw = dict(raw)
        raw["arrays"] = {role: path for role, path in raw["arrays"].items() if role not in PROMPT_ROLES}
        groups.append(raw)
    manifest = dict(manifest, run_id=new_id, routing=dict(manifest["routing"], groups=groups))
    manifest.pop("arrays", None)
    manifest["capture_config"] = {
        **(manifest.get("capture_config") or {}),
        "scrambled": {
            "variant": variant,
            "seed": seed,
            "source_run_id": reader.manifest.get("run_id") if reader.manifest else None,
            "meaning": MEANING[variant],
        },
    }
    plans: dict[str, Any] = {}
    biases: dict[str, np.ndarray] = {}
    for group in reader.routing.groups:
        lg = len(group.layers)
        bias = sidecar.whole(group, "bias")
        if variant == "tokens":
            plans[group.name] = _token_plan(rng, count, lg)
            if bias is not None:
                biases[group.name] = bias
        elif bias is not None:  # one relabelling per layer, applied to the bias too
            labels = _labels(rng, lg, group)  # [Lg, E]
            plans[group.name] = labels
            moved = np.empty_like(bias)
            np.put_along_axis(moved, labels, bias, axis=1)
            biases[group.name] = moved
        else:
            plans[group.name] = None
    layout = dict(reader.layout or {}, run_id=new_id)
    writer = RunWriter(out_root, manifest, tokens_expected=count)
    try:
        if variant == "tokens":
            with spill_folder(writer.staging.parent, "scramble") as spill:
                buckets = _Buckets(spill, count)
                try:
                    for group in reader.routing.groups:
                        buckets.route(group, plans.pop(group.name))
                        for role in _roles(group):
                            buckets.scatter(sidecar, group, role)
                    lines = line_blocks(reader.raw_path, buckets.size)
                    for bucket in buckets.assembled(reader.routing.groups):
                        writer.add_tokens(_metas(lines, bucket.tokens, new_id), bucket.arrays)
                finally:
                    buckets.close()
        else:
            drawn = [g for g in reader.routing.groups if plans[g.name] is None]
            with _Labels(rng, count, drawn) as source:
                lines = line_blocks(reader.raw_path, BLOCK_TOKENS)
                for start in range(0, count, BLOCK_TOKENS):
                    stop = min(count, start + BLOCK_TOKENS)
                    routed = {
                        group.name: _relabelled(sidecar, group, plans[group.name], start, stop, source)
                        for group in reader.routing.groups
                    }
                    writer.add_tokens(_metas(lines, stop - start, new_id), routed)
        return writer.close(layout, bias=biases or None, verify=verify)
    except BaseException:
        writer.abort()
        raise


def _token_plan(rng: np.random.Generator, count: int, layers: int) -> np.ndarray:
    """``[N, Lg]``: the source row of every output row, one permutation of the tokens a layer."""
    plan = np.empty((count, layers), dtype=np.int32 if count < 2**31 else np.int64)
    for slot in range(layers):
        plan[:, slot] = rng.permutation(count)
    return plan


def _metas(lines: Iterator[list[bytes]], count: int, new_id: str) -> list[dict[str, Any]]:
    """The next ``count`` token lines' objects, renamed to the twin (read in order, a block at a
    time: no index of the trace is built)."""
    block = next(lines, [])
    if len(block) != count:  # never expected: the lines were just counted
        raise RuntimeError(f"the raw trace changed while it was scrambled ({len(block)} lines, not {count})")
    metas = []
    for line in block:
        meta = parse_json_bytes(line)
        meta["run_id"] = new_id
        metas.append(meta)
    return metas


def _roles(group: RoutingGroup) -> list[str]:
    return [role for role in ("selected", "weights", "scores") if role in group.arrays]


class _Buckets:
    """The token scramble's rows moved through spill files, in flat memory and sequential reads.

    Output row ``h`` of layer slot ``s`` is source row ``plan[h, s]``. The source is read in
    chunks of ``BUCKET_TOKENS`` tokens, in order; each chunk's rows are put in the order of the
    output bucket (``BUCKET_TOKENS`` output tokens) they go to and appended to the role's spill
    file. A bucket is then assembled from its piece of every chunk. Where each row goes (the
    chunk's order and each row's place in its bucket) depends on the group's plan alone, so it
    is worked out once for all of a group's roles (8 bytes a row in memory; 4 once scattered).
    The spill bypasses the page cache where the file system allows (``direct_spill``). Memory: a
    chunk and two buckets of rows; reads: each source array once, in order (rows picked at random
    from the arrays would map most of them into memory, or cost a page fault a row).
    """

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = folder, count
        self.size = BUCKET_TOKENS
        self.routes: dict[str, list[_Route]] = {}
        self.orders: dict[str, list[np.ndarray]] = {}  # per chunk, its rows in bucket order (to scatter)
        self.spills: dict[tuple[str, str], _RoleSpill] = {}
        self.reading = AlignedBuffer()  # a source chunk, reused
        self.readers: ThreadPoolExecutor | None = None  # reading a bucket's pieces
        self.local = threading.local()

    def route(self, group: RoutingGroup, plan: np.ndarray) -> None:
        """Where every source row of ``group`` goes (``plan``: [N, Lg] source row per output row)."""
        lg = plan.shape[1]
        wide = self.count * lg >= 2**31
        destination = np.empty(plan.shape, dtype=np.int64 if wide else np.int32)  # output row per source row
        for slot in range(lg):
            destination[plan[:, slot], slot] = np.arange(self.count)
        span = self.size * lg  # keys of one output bucket
        buckets = -(-self.count // self.size)
        kind = np.int64 if wide else np.int32
        routes, orders = [], []
        for start in range(0, self.count, self.size):
            keys = (destination[start : start + self.size].astype(np.int64) * lg + np.arange(lg)).ravel()
            bucket = keys // span
            order = np.argsort(bucket, kind="stable")
            ordered = bucket[order]
            bounds = np.searchsorted(ordered, np.arange(buckets + 1))
            local = keys[order] - ordered * span  # place in its bucket
            orders.append(order.astype(kind))
            routes.append(_Route(bounds, local.astype(np.int32)))
        self.routes[group.name], self.orders[group.name] = routes, orders

    def scatter(self, sidecar: Any, group: RoutingGroup, role: str) -> None:
        orders = self.orders[group.name]
        spill: _RoleSpill | None = None
        source = sidecar.array(group, role)
        for number, start in enumerate(range(0, self.count, self.size)):
            stop = min(self.count, start + self.size)
            rows = source.read(start, stop, self.reading)  # [c, Lg, ...] in order
            values = _as_rows(rows.reshape(rows.shape[0] * rows.shape[1], -1))
            if spill is None:
                spill = self.spills[group.name, role] = _RoleSpill(
                    SpillFile(self.folder / f"{group.name}.{role}"), rows.shape[2:], rows.dtype, values.dtype
                )
            staging = spill.file.staging(values.nbytes).view(values.dtype)
            np.take(values, orders[number], out=staging, mode="clip")  # indices in range
            spill.offsets.append(spill.file.append(staging))

    def gather(self, group: RoutingGroup, role: str, start: int, stop: int, slot: int = 0) -> np.ndarray:
        """Output rows ``start .. stop - 1`` (a whole bucket) of one array, in output buffer
        ``slot`` (two are kept, so one is filled while the other is written; reused, as a fresh
        array a bucket would cost fresh pages every bucket)."""
        lg = len(group.layers)
        spill = self.spills[group.name, role]
        number = start // self.size
        buffer = spill.out[slot]
        if buffer is None:
            buffer = spill.out[slot] = np.empty(self.size * lg, dtype=spill.row)
        out = buffer[: (stop - start) * lg]
        width = spill.row.itemsize

        def piece(part: tuple[_Route, int]) -> None:
            route, offset = part
            first, last = int(route.bounds[number]), int(route.bounds[number + 1])
            if last > first:
                data = spill.file.read(offset + first * width, (last - first) * width, self._buffer())
                out[route.local[first:last]] = np.frombuffer(data, dtype=spill.row)

        parts = zip(self.routes[group.name], spill.offsets, strict=True)
        if self.readers is None:
            for part in parts:
                piece(part)
        else:  # a bucket's pieces lie apart in the file: several reads at once keep the disk busy
            for _ in self.readers.map(piece, parts):
                pass
        values = np.frombuffer(out.data, dtype=spill.dtype)
        return values.reshape((stop - start, lg, *spill.shape))

    def assembled(self, groups: Sequence[RoutingGroup]) -> Iterator[_Bucket]:
        """Every bucket's arrays, in order; the next one is read (by a thread: the reads wait on
        the disk, not the processor) while the caller writes this one."""
        starts = range(0, self.count, self.size)
        self._scattered()

        def bucket(number: int) -> _Bucket:
            start = starts[number]
            stop = min(self.count, start + self.size)
            arrays = {
                g.name: {role: self.gather(g, role, start, stop, number % 2) for role in _roles(g)}
                for g in groups
            }
            return _Bucket(stop - start, arrays)

        with ThreadPoolExecutor(max_workers=1) as reading, ThreadPoolExecutor(max_workers=READERS) as readers:
            self.readers = readers
            try:
                coming = reading.submit(bucket, 0) if starts else None
                for number in range(len(starts)):
                    assert coming is not None
                    done = coming.result()  # the caller is through with the other slot's bucket
                    coming = reading.submit(bucket, number + 1) if number + 1 < len(starts) else None
                    yield done
            finally:
                self.readers = None

    def _buffer(self) -> AlignedBuffer:
        """The calling thread's own read buffer (a reader's goes with its thread)."""
        buffer: AlignedBuffer | None = getattr(self.local, "buffer", None)
        if buffer is None:
            buffer = self.local.buffer = AlignedBuffer()
        return buffer

    def _scattered(self) -> None:
        """Every array is in its spill: the scatter's buffers and orders go."""
        self.reading.close()
        self.orders.clear()
        for spill in self.spills.values():
            spill.file.written()

    def close(self) -> None:
        for spill in self.spills.values():
            spill.file.close()


class _Bucket(NamedTuple):
    tokens: int
    arrays: dict[str, dict[str, np.ndarray]]


class _Route(NamedTuple):
    """One source chunk's rows in bucket order: where each bucket's rows start, and each row's
    place in its bucket."""

    bounds: np.ndarray
    local: np.ndarray


class _RoleSpill:
    def __init__(self, file: SpillFile, shape: tuple[int, ...], dtype: Any, row: Any) -> None:
        self.file, self.shape, self.dtype, self.row = file, shape, dtype, row
        self.offsets: list[int] = []  # each source chunk's rows in the file
        self.out: list[np.ndarray | None] = [None, None]  # the two output buffers


def _as_rows(array: np.ndarray) -> np.ndarray:
    """A C-contiguous ``[rows, width]`` array as one opaque item a row: numpy moves rows of
    those twice as fast as rows of numbers (the same bytes)."""
    data = np.ascontiguousarray(array)
    width = data.shape[1] * data.itemsize if data.ndim == 2 else 0
    if width == 0:
        return data
    return data.view(np.dtype((np.void, width))).reshape(data.shape[0])


class _Labels:
    """The per-row relabellings of the expert scramble, block by block and group by group, in
    the order ``_relabelled`` asks for them (the generator's draws are the same either way).

    Drawing them is a third of the scramble's time and strictly sequential, so on a long run a
    forked process draws them beside this one, which does the rest (reading, moving, writing),
    and sends each block's labels through a pipe in the smallest integer type that holds them."""

    def __init__(self, rng: np.random.Generator, count: int, groups: list[RoutingGroup]) -> None:
        self.rng = rng
        self.receiver: Any = None
        self.helper: Any = None
        self.taken: list[tuple[int, RoutingGroup]] = []  # what the helper has drawn so far
        if groups and count >= LABELS_BESIDE_FROM and can_fork_beside():
            ctx = multiprocessing.get_context("fork")
            self.receiver, sender = ctx.Pipe(duplex=False)
            self.helper = ctx.Process(target=_draw_labels, args=(sender, rng, count, groups), daemon=True)
            self.helper.start()
            sender.close()

    def next(self, rows: int, group: RoutingGroup) -> np.ndarray:
        """``[rows, E]`` integers: the next relabelling of ``group``'s rows."""
        if self.receiver is not None:
            kind = _label_type(group.num_experts)
            try:
                data = self.receiver.recv_bytes()
            except (EOFError, OSError):
                data = b""
            if len(data) == rows * group.num_experts * kind.itemsize:
                self.taken.append((rows, group))
                return np.frombuffer(data, dtype=kind).reshape(rows, group.num_experts)
            self._draw_here()  # the helper failed (it died, or sent its error): draw here from now on
        return _labels(self.rng, rows, group)

    def _draw_here(self) -> None:
        """Stop the helper and bring this process's generator to where the helper's stood."""
        self.close()
        for rows, group in self.taken:
            _labels(self.rng, rows, group)
        self.taken = []

    def close(self) -> None:
        if self.helper is not None:
            stop_helper(self.helper)
            self.receiver.close()
            self.helper = self.receiver = None

    def __enter__(self) -> _Labels:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: a run this long (tokens) has its expert relabellings drawn by a forked process
LABELS_BESIDE_FROM = 16 * BLOCK_TOKENS


def _label_type(experts: int) -> np.dtype[Any]:
    return np.dtype(np.int8 if experts <= 128 else np.int16 if experts <= 2**15 else np.int64)


def _draw_labels(conn: Any, rng: np.random.Generator, count: int, groups: list[RoutingGroup]) -> None:
    """(In the forked process.) Every block's relabellings, in the order they are asked for."""
    with forked_child(conn):
        for start in range(0, count, BLOCK_TOKENS):
            rows_per_layer = min(count, start + BLOCK_TOKENS) - start
            for group in groups:
                labels = _labels(rng, rows_per_layer * len(group.layers), group)
                conn.send_bytes(labels.astype(_label_type(group.num_experts)).reshape(-1).data)


def _relabelled(
    sidecar: Any,
    group: RoutingGroup,
    plan: Any,
    start: int,
    stop: int,
    labels: _Labels,
) -> dict[str, np.ndarray]:
    roles = _roles(group)
    lg, t = len(group.layers), stop - start
    values = {role: sidecar.rows(group, role, start, stop) for role in roles}
    rows = t * lg
    # one relabelling per row, or the layer's one relabelling repeated for every token
    per_row = labels.next(rows, group) if plan is None else np.tile(plan, (t, 1))
    out = {}
    selected = values["selected"].reshape(rows, -1)
    out["selected"] = np.take_along_axis(per_row, selected, axis=1).astype(np.int64).reshape(t, lg, -1)
    if "weights" in values:
        out["weights"] = values["weights"]
    if "scores" in values:
        # each row's scores moved to their new labels: one scatter through flat positions (the
        # labels as received, in 1 byte, and 4-byte positions: 1.7 times put_along_axis's speed)
        scores = values["scores"].reshape(rows, -1)
        width = scores.shape[1]
        kind = np.int32 if rows * width < 2**31 else np.intp
        places = per_row.astype(kind) + (np.arange(rows, dtype=kind) * width)[:, None]
        moved = np.empty_like(scores)
        moved.reshape(-1)[places.reshape(-1)] = scores.reshape(-1)
        out["scores"] = moved.reshape(t, lg, -1)
    return out
