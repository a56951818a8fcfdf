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

from pathlib import Path
from typing import Any

import numpy as np

from .arrays.npy import from_disk
from .bundle.reader import RunReader
from .bundle.writer_v02 import RunWriter
from .jsonfmt import parse_json_bytes
from .routing import PROMPT_ROLES, RoutingGroup

BLOCK_TOKENS = 1024
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
    reader: RunReader, manifest: dict[str, Any], out_root: Path, variant: str, seed: int, new_id: str
) -> Path:
    assert reader.routing is not None
    rng = np.random.default_rng(seed)
    sidecar = reader.sidecar()
    count = len(reader)
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
        for start in range(0, count, BLOCK_TOKENS):
            stop = min(count, start + BLOCK_TOKENS)
            metas = []
            for i in range(start, stop):
                meta = parse_json_bytes(reader.raw_line(i))
                meta["run_id"] = new_id
                metas.append(meta)
            routed: dict[str, dict[str, np.ndarray]] = {}
            for group in reader.routing.groups:
                routed[group.name] = _block(sidecar, group, plans[group.name], variant, start, stop, rng)
            writer.add_tokens(metas, routed)
        return writer.close(layout, bias=biases or None)
    except BaseException:
        writer.abort()
        raise


def _block(
    sidecar: Any,
    group: RoutingGroup,
    plan: Any,
    variant: str,
    start: int,
    stop: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    roles = [role for role in ("selected", "weights", "scores") if role in group.arrays]
    lg, t = len(group.layers), stop - start
    if variant == "tokens":
        out: dict[str, np.ndarray] = {}
        for role in roles:
            file = sidecar.array(group, role)
            mapped = np.load(file.path, mmap_mode="r")  # rows come from anywhere in the run
            parts = [
                from_disk(np.asarray(mapped[plan[start:stop, slot], slot]), file.dtype) for slot in range(lg)
            ]
            out[role] = np.stack(parts, axis=1)
        return out
    values = {role: sidecar.rows(group, role, start, stop) for role in roles}
    rows = t * lg
    # one relabelling per row, or the layer's one relabelling repeated for every token
    per_row = _labels(rng, rows, group) if plan is None else np.tile(plan, (t, 1))
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
