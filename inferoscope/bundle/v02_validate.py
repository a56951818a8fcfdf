"""Validation of what contract v0.2 adds: the routing declaration and the array files.

Structure first (every declared file present, a readable ``.npy`` header, dtype, shape, size,
one row per event), then the values block by block (vectorised, in two threads: numpy
releases the GIL), and the SHA-256 of every file in a thread beside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..arrays.npy import FLOAT_DTYPES, file_sha256
from ..routing import PROMPT_ROLES, Routing, RoutingGroup, rule_problems
from ..validation.aggregates import RunAggregates
from ..validation.issues import Location, ValidationIssue
from ..validation.messages import contract_message
from ..validation.routing_checks import Block, BlockFindings, check_block, softmax_entropy
from ..versions import MANIFEST_FILE
from .sidecar import INDEX_DTYPES, ROW_SHAPES, Sidecar

BLOCK_ELEMENTS = 1 << 21  # scores per block (8 MiB of float32): small enough to stay in cache


def routing_issues(manifest: Mapping[str, Any], routing: Routing) -> list[ValidationIssue]:
    """The declaration itself: sound rules, each layer in one group, every array declared once."""
    issues: list[ValidationIssue] = []
    declared = _mapping(manifest.get("arrays"))
    seen_layers: dict[int, str] = {}
    used: dict[str, str] = {}
    for number, group in enumerate(routing.groups):
        where = Location(file=MANIFEST_FILE, json_path=f"$.routing.groups[{number}]")
        for problem in rule_problems(group):
            issues.append(
                _issue("manifest", "routing_rule_invalid", where, f"group {group.name!r}: {problem}")
            )
        for layer in group.layers:
            if layer in seen_layers:
                issues.append(
                    _issue(
                        "manifest",
                        "routing_layer_repeated",
                        Location(
                            file=MANIFEST_FILE, layer_index=layer, json_path=f"{where.json_path}.layers"
                        ),
                        f"layer {layer} is in group {seen_layers[layer]!r} and again in {group.name!r}",
                    )
                )
            seen_layers[layer] = group.name
        for role, relpath in group.arrays.items():
            at = Location(file=MANIFEST_FILE, json_path=f"{where.json_path}.arrays.{role}")
            if relpath in used:
                issues.append(
                    _issue(
                        "manifest",
                        "array_path_repeated",
                        at,
                        f"{relpath} is already {used[relpath]}; every role needs its own file",
                    )
                )
            used[relpath] = f"{group.name}.{role}"
            if relpath not in declared:
                issues.append(
                    _issue(
                        "manifest", "array_not_declared", at, f"{relpath} is not listed in manifest arrays"
                    )
                )
    for relpath in declared:
        if relpath not in used:
            issues.append(
                _issue(
                    "manifest",
                    "array_not_referenced",
                    Location(file=MANIFEST_FILE, json_path="$.arrays"),
                    f"{relpath} is listed in manifest arrays but no routing group uses it",
                )
            )
    return issues


def validate_arrays(
    run_dir: Any,
    manifest: Mapping[str, Any],
    routing: Routing,
    events: int,
    aggregates: RunAggregates,
    report_add: Any,
    count_more: Any,
) -> None:
    """Check every array file of ``routing`` against ``events`` raw events; fold in aggregates."""
    declared = _mapping(manifest.get("arrays"))
    prompt = _mapping(manifest.get("prompt"))
    token_ids = prompt.get("token_ids")
    prompt_rows = len(token_ids) if isinstance(token_ids, list) else None
    sidecar = Sidecar(run_dir, routing, dict(declared))
    with ThreadPoolExecutor(max_workers=2) as pool:
        sums: dict[str, Future[str]] = {
            relpath: pool.submit(file_sha256, file.path) for relpath, file in sidecar.files.items()
        }
        report_add(_file_issues(sidecar, routing, declared, events, prompt_rows))
        usable_groups = [g for g in routing.groups if not rule_problems(g)]
        for group in usable_groups:
            _check_group(
                sidecar, group, routing, events, prompt_rows, aggregates, report_add, count_more, pool
            )
        for relpath, future in sums.items():
            expected = (
                declared.get(relpath, {}).get("sha256")
                if isinstance(declared.get(relpath), Mapping)
                else None
            )
            actual = future.result()
            if isinstance(expected, str) and actual != expected:
                report_add(
                    [
                        _issue(
                            "run_bundle",
                            "array_checksum_mismatch",
                            Location(file=relpath),
                            f"{relpath} has SHA-256 {actual}, the manifest says {expected}",
                            path=relpath,
                        )
                    ]
                )


def _file_issues(
    sidecar: Sidecar,
    routing: Routing,
    declared: Mapping[str, Any],
    events: int,
    prompt_rows: int | None,
) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    for relpath, why in sidecar.problems.items():
        where = Location(file=relpath)
        if why == "missing":
            issues.append(
                ValidationIssue("run_bundle", "missing_file", f"{relpath} is missing", location=where)
            )
        elif why.startswith("holds "):
            issues.append(_issue("run_bundle", "array_dtype_mismatch", where, f"{relpath} {why}"))
        elif why.startswith("is ") and "header declares" in why:
            issues.append(_issue("run_bundle", "array_size_mismatch", where, f"{relpath} {why}"))
        else:
            issues.append(_issue("run_bundle", "array_header_invalid", where, f"{relpath}: {why}"))
    for group in routing.groups:
        lg, e, k = len(group.layers), group.num_experts, group.top_k
        for role, relpath in group.arrays.items():
            file = sidecar.files.get(relpath)
            if file is None:
                continue
            where = Location(file=relpath)
            shape = file.header.shape
            declaration = declared.get(relpath)
            if isinstance(declaration, Mapping) and list(shape) != declaration.get("shape"):
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_shape_mismatch",
                        where,
                        f"{relpath} has shape {list(shape)}, "
                        f"manifest arrays declares {declaration.get('shape')}",
                    )
                )
            want_dtype = INDEX_DTYPES if role.endswith("selected") else _float_dtypes(role, routing)
            if file.dtype not in want_dtype:
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_dtype_mismatch",
                        where,
                        f"{relpath} ({group.name}.{role}) holds {file.dtype}; "
                        f"it must be {' or '.join(want_dtype)}",
                    )
                )
            if role == "bias":
                if shape != (lg, e):
                    issues.append(
                        _issue(
                            "run_bundle",
                            "array_shape_mismatch",
                            where,
                            f"{relpath} ({group.name}.bias) has shape {list(shape)}, not [{lg}, {e}]",
                        )
                    )
                continue
            row = ROW_SHAPES[role](lg, e, k)
            if shape[1:] != row:
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_shape_mismatch",
                        where,
                        f"{relpath} ({group.name}.{role}) has rows of shape {list(shape[1:])}, "
                        f"not {list(row)} (layers in the group, then "
                        f"{'experts' if role.endswith('scores') else 'k'})",
                    )
                )
                continue
            want_rows = prompt_rows if role in PROMPT_ROLES else events
            if want_rows is None:
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_row_count_mismatch",
                        where,
                        f"{relpath} holds prompt rows but manifest prompt.token_ids is absent",
                    )
                )
            elif shape[0] != want_rows:
                what = "prompt tokens" if role in PROMPT_ROLES else "raw events"
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_row_count_mismatch",
                        where,
                        f"{relpath} has {shape[0]} rows but the run has {want_rows} {what}",
                    )
                )
    return issues


def _float_dtypes(role: str, routing: Routing) -> tuple[str, ...]:
    if role == "bias":
        return ("float32", "float64")
    return (routing.float_dtype,) if routing.float_dtype in FLOAT_DTYPES else FLOAT_DTYPES


def _check_group(
    sidecar: Sidecar,
    group: RoutingGroup,
    routing: Routing,
    events: int,
    prompt_rows: int | None,
    aggregates: RunAggregates,
    report_add: Any,
    count_more: Any,
    pool: ThreadPoolExecutor,
) -> None:
    lg, e, k = len(group.layers), group.num_experts, group.top_k
    bias = None
    if group.selection.bias:
        bias_file = sidecar.array(group, "bias")
        if bias_file is None or bias_file.header.shape != (lg, e):
            return  # reported above; without its bias the selection cannot be checked
        bias = sidecar.whole(group, "bias")
        if bias is not None and not np.isfinite(bias).all():
            layer_slot, expert = np.argwhere(~np.isfinite(bias))[0]
            report_add(
                [
                    _issue(
                        f"raw_event.layer[{group.layers[int(layer_slot)]}]",
                        "value_not_finite",
                        Location(
                            file=group.arrays.get("bias"),
                            layer_index=group.layers[int(layer_slot)],
                            expert_index=int(expert),
                        ),
                        f"the selection bias of expert {int(expert)} is not finite",
                    )
                ]
            )
            return
    for prefix, rows, prompt in (("", events, False), ("prompt_", prompt_rows, True)):
        files = {
            role: group.arrays[prefix + role]
            for role in ("selected", "weights", "scores")
            if prefix + role in group.arrays
        }
        if "selected" not in files or rows is None:
            continue
        shapes = {
            "selected": (rows, lg, k),
            "weights": (rows, lg, k),
            "scores": (rows, lg, e),
        }
        present = {}
        for role in files:
            file = sidecar.array(group, prefix + role)
            if file is None or file.header.shape != shapes[role]:
                present[role] = False
            else:
                present[role] = True
        if not present["selected"]:
            continue
        step = max(1, BLOCK_ELEMENTS // max(1, lg * max(e, k)))
        starts = list(range(0, rows, step))

        def run(
            start: int,
            prefix: str = prefix,
            prompt: bool = prompt,
            present: dict[str, bool] = present,
            files: dict[str, str] = files,
            rows: int = rows,
            step: int = step,
        ) -> tuple[BlockFindings, Block, Any]:
            stop = min(rows, start + step)
            block = Block(
                group=group,
                first=start,
                selected=sidecar.rows(group, prefix + "selected", start, stop),  # type: ignore[arg-type]
                weights=sidecar.rows(group, prefix + "weights", start, stop)
                if present.get("weights")
                else None,
                scores=sidecar.rows(group, prefix + "scores", start, stop) if present.get("scores") else None,
                bias=bias,
                files=files,
                prompt=prompt,
            )
            findings = check_block(block, routing.tolerance)
            entropy = _display_entropy(block, group) if not prompt else None
            return findings, block, entropy

        for findings, block, entropy in pool.map(run, starts):
            report_add(findings.issues)
            count_more(findings.overflow)
            if not prompt:
                _aggregate(aggregates, group, block, findings, entropy)


def _display_entropy(block: Block, group: RoutingGroup) -> np.ndarray | None:
    """Per row: the entropy the run views show, by its definition for the score function.

    softmax: of the scores; logits: of their softmax; sigmoid: of the scores divided by their
    sum (how evenly the router's scores spread, not a probability it computed).
    """
    if block.scores is None:
        return None
    t, lg, e = block.scores.shape
    scores = block.scores.reshape(t * lg, e).astype(np.float32, copy=False)
    if group.score_function == "logits":
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = z / z.sum(axis=1, keepdims=True)
    elif group.score_function == "sigmoid":
        total = scores.sum(axis=1, keepdims=True)
        scores = np.where(total > 0, scores / np.where(total > 0, total, 1.0), 0.0).astype(np.float32)
    elif group.score_function != "softmax":
        return None
    return softmax_entropy(scores)


def _aggregate(
    aggregates: RunAggregates,
    group: RoutingGroup,
    block: Block,
    findings: BlockFindings,
    entropy: np.ndarray | None,
) -> None:
    t, lg, k = block.selected.shape
    usable = findings.usable if findings.usable is not None else np.ones(t * lg, dtype=bool)
    if not usable.any():
        return
    layers = np.tile(np.asarray(group.layers, dtype=np.int64), t)
    positions = np.repeat(np.arange(block.first, block.first + t, dtype=np.int64), lg)
    selected = block.selected.reshape(t * lg, k).astype(np.int64)
    e = group.num_experts
    if entropy is None:
        values = np.full(t * lg, np.nan)
        normalized = values
    else:
        values = entropy
        normalized = entropy / math.log(e) if e > 1 else np.zeros_like(entropy)
    aggregates.add_rows(
        layers[usable],
        e,
        k,
        selected[usable],
        values[usable],
        normalized[usable],
        positions=positions[usable],
    )


def _issue(scope: str, code: str, where: Location, detail: str, **values: object) -> ValidationIssue:
    return ValidationIssue(scope, code, contract_message(code, **values), location=where, detail=detail)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
