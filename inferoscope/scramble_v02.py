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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.lines import line_blocks
from .bundle.pipe import can_fork_beside, forked_child
from .bundle.reader import RunReader
from .bundle.writer import spill_folder
from .bundle.writer_v02 import RunWriter
from .forked_call import stop as stop_helper
from .jsonfmt import parse_json_bytes
from .routing import PROMPT_ROLES, RoutingGroup

BLOCK_TOKENS = 1024
BUCKET_TOKENS = 8_192  # the token scramble's output rows per spill bucket
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
        groups = rng.permuted(np.tile(np.arange(sel.n_group), (rows, 1)), axis=1)
        within = rng.permuted(np.tile(np.arange(per), (rows, 1)), axis=1)
        experts = np.arange(e)
        labels: np.ndarray = groups[:, experts // per] * per + within[:, experts % per]
        return labels
    shuffled: np.ndarray = rng.permuted(np.tile(np.arange(e), (rows, 1)), axis=1)
    return shuffled


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
            plans[group.name] = np.stack([rng.permutation(count) for _ in range(lg)], axis=1)  # [N, Lg]
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
    writer = RunWriter(out_root, manifest)
    try:
        if variant == "tokens":
            with spill_folder(writer.staging.parent, "scramble") as spill:
                buckets = _Buckets(spill, count)
                for group in reader.routing.groups:
                    for role in _roles(group):
                        buckets.scatter(sidecar, group, role, plans[group.name])
                lines = line_blocks(reader.raw_path, buckets.size)
                for start in range(0, count, buckets.size):
                    stop = min(count, start + buckets.size)
                    routed = {
                        group.name: {role: buckets.gather(group, role, start, stop) for role in _roles(group)}
                        for group in reader.routing.groups
                    }
                    writer.add_tokens(_metas(lines, stop - start, new_id), routed)
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

    Output row ``h`` of layer slot ``s`` is source row ``plan[h, s]``. One sequential pass over
    each source array sends every row to the bucket of its output rows (``BUCKET_TOKENS`` tokens
    a bucket), with its place in the bucket; a bucket is then read whole and its rows put in place.
    Memory: a bucket of rows; reads: each array twice, in order (rows picked at random from the
    arrays would map most of them into memory, or cost a page fault a row).
    """

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = folder, count
        self.size = BUCKET_TOKENS
        self.shapes: dict[tuple[str, str], tuple[tuple[int, ...], Any]] = {}

    def _path(self, group: RoutingGroup, role: str, bucket: int, kind: str) -> Path:
        return self.folder / f"{group.name}.{role}.{bucket}.{kind}"

    def scatter(self, sidecar: Any, group: RoutingGroup, role: str, plan: np.ndarray) -> None:
        lg = plan.shape[1]
        small = self.count * lg < 2**31
        destination = np.empty(plan.shape, dtype=np.int32 if small else np.int64)  # output row per source row
        for slot in range(lg):
            destination[plan[:, slot], slot] = np.arange(self.count)
        handles: dict[tuple[int, str], Any] = {}
        try:
            for start in range(0, self.count, self.size):
                stop = min(self.count, start + self.size)
                rows = sidecar.rows(group, role, start, stop)  # [c, Lg, ...] in order
                self.shapes[(group.name, role)] = (rows.shape[2:], rows.dtype)
                keys = (
                    destination[start:stop].astype(np.int64) * lg + np.arange(lg)
                ).ravel()  # row * Lg + slot
                bucket = keys // (self.size * lg)
                order = np.argsort(bucket, kind="stable")
                keys, values = keys[order], _as_rows(rows.reshape(keys.size, -1))[order]  # bucket by bucket
                bounds = np.searchsorted(bucket[order], np.arange(bucket.max() + 2))
                for number in range(int(bucket.max()) + 1):
                    first, last = int(bounds[number]), int(bounds[number + 1])
                    if last > first:
                        for kind, part in (("keys", keys), ("rows", values)):
                            handle = handles.get((number, kind))
                            if handle is None:
                                handle = handles[number, kind] = self._path(group, role, number, kind).open(
                                    "ab"
                                )
                            handle.write(part[first:last].data)
        finally:
            for handle in handles.values():
                handle.close()

    def gather(self, group: RoutingGroup, role: str, start: int, stop: int) -> np.ndarray:
        """Output rows ``start .. stop - 1`` (a whole bucket) of one array."""
        lg = len(group.layers)
        shape, dtype = self.shapes[(group.name, role)]
        number = start // self.size
        keys = np.fromfile(self._path(group, role, number, "keys"), dtype=np.int64)
        values = np.fromfile(self._path(group, role, number, "rows"), dtype=dtype).reshape(keys.size, -1)
        out = np.empty(((stop - start) * lg, values.shape[1]), dtype=dtype)
        _as_rows(out)[keys - start * lg] = _as_rows(values)
        for kind in ("keys", "rows"):
            self._path(group, role, number, kind).unlink()
        return out.reshape((stop - start, lg, *shape))


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
        """``[rows, E]`` int64: the next relabelling of ``group``'s rows."""
        if self.receiver is not None:
            kind = _label_type(group.num_experts)
            try:
                data = self.receiver.recv_bytes()
            except (EOFError, OSError):
                data = b""
            if len(data) == rows * group.num_experts * kind.itemsize:
                self.taken.append((rows, group))
                return np.frombuffer(data, dtype=kind).reshape(rows, group.num_experts).astype(np.int64)
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
    selected = values["selected"].reshape(rows, -1).astype(np.int64)
    out["selected"] = np.take_along_axis(per_row, selected, axis=1).reshape(t, lg, -1)
    if "weights" in values:
        out["weights"] = values["weights"]
    if "scores" in values:
        scores = values["scores"].reshape(rows, -1)
        moved = np.empty_like(scores)
        np.put_along_axis(moved, per_row, scores, axis=1)
        out["scores"] = moved.reshape(t, lg, -1)
    return out
