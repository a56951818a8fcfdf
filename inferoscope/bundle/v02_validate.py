"""Validation of what contract v0.2 adds: the routing declaration and the array files.

Structure first (every declared file present, a readable ``.npy`` header, dtype, shape, size,
one row per event), then the values block by block (vectorised, in two threads: numpy
releases the GIL), and the SHA-256 of every file in a thread beside them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..arrays.npy import FLOAT_DTYPES, file_sha256
from ..routing import PROMPT_ROLES, Routing, RoutingGroup, rule_problems
from ..validation.aggregates import BlockPart, RunAggregates
from ..validation.issues import Location, ValidationIssue
from ..validation.messages import contract_message
from ..validation.routing_checks import Block, BlockFindings, check_block, softmax_entropy
from ..versions import MANIFEST_FILE
from .sidecar import INDEX_DTYPES, ROW_SHAPES, Sidecar

BLOCK_ELEMENTS = 1 << 18  # scores per block (1 MiB of float32): temporaries stay in cache
AHEAD = 4  # blocks read and checked ahead of the loop that takes them (two threads check)
_T = TypeVar("_T")


def routing_issues(manifest: Mapping[str, Any], routing: Routing) -> list[ValidationIssue]:
    """The declaration itself: sound rules, each layer in one group, every array declared once."""
    issues: list[ValidationIssue] = []
    declared = _mapping(manifest.get("arrays"))
    seen_layers: dict[tuple[int, str], str] = {}
    used: dict[str, str] = {}
    for number, group in enumerate(routing.groups):
        where = Location(file=MANIFEST_FILE, json_path=f"$.routing.groups[{number}]")
        for problem in rule_problems(group):
            issues.append(
                _issue("manifest", "routing_rule_invalid", where, f"group {group.name!r}: {problem}")
            )
        for layer in group.layers:
            if (layer, group.site) in seen_layers:
                issues.append(
                    _issue(
                        "manifest",
                        "routing_layer_repeated",
                        Location(
                            file=MANIFEST_FILE, layer_index=layer, json_path=f"{where.json_path}.layers"
                        ),
                        f"layer {layer} ({group.site}) is in group {seen_layers[(layer, group.site)]!r} "
                        f"and again in {group.name!r}",
                    )
                )
            seen_layers[(layer, group.site)] = group.name
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
    sidecar: Sidecar,
    manifest: Mapping[str, Any],
    routing: Routing,
    aggregates: RunAggregates,
    report_add: Any,
    count_more: Any,
) -> None:
    """Check every array file of ``routing`` (all but the row counts: ``row_count_issues``).

    Each file is read once: the blocks the value checks read are also fed, in order, to the
    file's SHA-256 (which releases the GIL, so it runs beside the checks); only files the
    checks could not read whole are hashed by a read of their own.
    """
    declared = _mapping(manifest.get("arrays"))
    hashes = _Hashes(sidecar)
    report_add(_file_issues(sidecar, routing, declared))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for group in routing.groups:
            if not rule_problems(group):
                _check_group(sidecar, group, routing, aggregates, report_add, count_more, pool, hashes)
        digests = hashes.finish(pool)
    for relpath, actual in digests.items():
        expected = _mapping(declared.get(relpath)).get("sha256")
        if isinstance(expected, str) and actual != expected:
            report_add(
                [
                    _issue(
                        "run_bundle",
                        "array_checksum_mismatch",
                        Location(file=relpath),
                        f"{relpath} has SHA-256 {actual}, the manifest says {expected}",
                    )
                ]
            )


def row_count_issues(sidecar: Sidecar, manifest: Mapping[str, Any], events: int) -> list[ValidationIssue]:
    """Per-token arrays need one row per raw event; prompt arrays one per prompt token id."""
    token_ids = _mapping(manifest.get("prompt")).get("token_ids")
    prompt_rows = len(token_ids) if isinstance(token_ids, list) else None
    issues: list[ValidationIssue] = []
    for group in sidecar.routing.groups:
        for role, relpath in group.arrays.items():
            file = sidecar.files.get(relpath)
            if file is None or role == "bias" or not file.header.shape:
                continue
            want = prompt_rows if role in PROMPT_ROLES else events
            where = Location(file=relpath)
            if want is None:
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_row_count_mismatch",
                        where,
                        f"{relpath} holds prompt rows but manifest prompt.token_ids is absent",
                    )
                )
            elif file.header.shape[0] != want:
                what = "prompt tokens" if role in PROMPT_ROLES else "raw events"
                issues.append(
                    _issue(
                        "run_bundle",
                        "array_row_count_mismatch",
                        where,
                        f"{relpath} has {file.header.shape[0]} rows but the run has {want} {what}",
                    )
                )
    return issues


class _Hashes:
    """Running SHA-256 of each array file, fed with the blocks as the checks read them."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.files = sidecar.files
        self.running: dict[str, Any] = {}
        self.next: dict[str, int] = {}
        for relpath, file in sidecar.files.items():
            with file.path.open("rb") as handle:
                head = handle.read(file.header.offset)
            self.running[relpath] = hashlib.sha256(head)
            self.next[relpath] = 0

    def feed(self, relpath: str, start_row: int, data: bytes) -> None:
        if self.next.get(relpath) != start_row or not data:
            return
        self.running[relpath].update(data)
        self.next[relpath] = start_row + len(data) // self.files[relpath].header.row_bytes

    def finish(self, pool: ThreadPoolExecutor) -> dict[str, str]:
        digests: dict[str, str] = {}
        rest: dict[str, Future[str]] = {}
        for relpath, file in self.files.items():
            if file.header.shape and self.next[relpath] == file.header.shape[0]:
                digests[relpath] = self.running[relpath].hexdigest()
            else:
                rest[relpath] = pool.submit(file_sha256, file.path)
        digests.update({relpath: future.result() for relpath, future in rest.items()})
        return digests


def _file_issues(
    sidecar: Sidecar,
    routing: Routing,
    declared: Mapping[str, Any],
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
    return issues


def _float_dtypes(role: str, routing: Routing) -> tuple[str, ...]:
    if role == "bias":
        return ("float32", "float64")
    return (routing.float_dtype,) if routing.float_dtype in FLOAT_DTYPES else FLOAT_DTYPES


def _check_group(
    sidecar: Sidecar,
    group: RoutingGroup,
    routing: Routing,
    aggregates: RunAggregates,
    report_add: Any,
    count_more: Any,
    pool: ThreadPoolExecutor,
    hashes: _Hashes,
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
    for prefix, prompt in (("", False), ("prompt_", True)):
        files = {
            role: group.arrays[prefix + role]
            for role in ("selected", "weights", "scores")
            if prefix + role in group.arrays
        }
        selected_file = sidecar.array(group, prefix + "selected")
        if selected_file is None or selected_file.header.shape[1:] != (lg, k):
            continue
        rows = selected_file.header.shape[0]
        shapes = {"selected": (rows, lg, k), "weights": (rows, lg, k), "scores": (rows, lg, e)}
        present = {}
        for role in files:
            file = sidecar.array(group, prefix + role)
            present[role] = file is not None and file.header.shape == shapes[role]
        step = max(1, BLOCK_ELEMENTS // max(1, lg * max(e, k)))

        def run(
            start: int,
            prefix: str = prefix,
            prompt: bool = prompt,
            present: dict[str, bool] = present,
            files: dict[str, str] = files,
            rows: int = rows,
            step: int = step,
        ) -> tuple[BlockFindings, Block, Any, dict[str, bytes]]:
            stop = min(rows, start + step)
            raw: dict[str, bytes] = {}
            arrays: dict[str, np.ndarray | None] = {}
            for role in ("selected", "weights", "scores"):
                file = sidecar.array(group, prefix + role) if present.get(role) else None
                if file is None:
                    arrays[role] = None
                    continue
                raw[file.relpath] = file.read_raw(start, stop)
                arrays[role] = file.rows_of(raw[file.relpath])
            block = Block(
                group=group,
                first=start,
                selected=arrays["selected"],  # type: ignore[arg-type]
                weights=arrays["weights"],
                scores=arrays["scores"],
                bias=bias,
                files=files,
                prompt=prompt,
            )
            findings = check_block(block, routing.tolerance)
            part = None
            if not prompt:
                t = stop - start
                usable = findings.usable
                part = BlockPart.of(
                    group.layers,
                    e,
                    block.selected,
                    None if (entropy := _display_entropy(block, group)) is None else entropy.reshape(t, lg),
                    start,
                    None if usable is None or usable.all() else usable.reshape(t, lg),
                )
            return findings, block, part, raw

        for findings, block, part, raw in _in_order(pool, run, range(0, rows, step)):
            for relpath, data in raw.items():
                hashes.feed(relpath, block.first, data)
            report_add(findings.issues)
            count_more(findings.overflow)
            if part is not None:
                aggregates.add_block(part)


def _in_order(pool: ThreadPoolExecutor, work: Callable[[int], _T], items: Iterable[int]) -> Iterator[_T]:
    """``pool.map(work, items)`` with at most ``AHEAD`` results waiting to be taken. ``map``
    submits every block at once, so wherever the loop that hashes and counts them is slower than
    the threads that read and check them (a check beside a command, sharing the cores) the
    blocks piled up: 240-440 MB beside a 500,000-token export, against 150 MB alone."""
    pending: deque[Future[_T]] = deque()
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) >= AHEAD:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
    elif group.score_function in ("sigmoid", "sqrt_softplus"):
        total = scores.sum(axis=1, keepdims=True)
        scores = np.where(total > 0, scores / np.where(total > 0, total, 1.0), 0.0).astype(np.float32)
    elif group.score_function != "softmax":
        return None
    return softmax_entropy(scores)


def _issue(scope: str, code: str, where: Location, detail: str, **values: object) -> ValidationIssue:
    return ValidationIssue(scope, code, contract_message(code, **values), location=where, detail=detail)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
