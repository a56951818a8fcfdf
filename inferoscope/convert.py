"""Convert a run between contract v0.1.0 (routing as NDJSON text) and v0.2 (array files).

v0.1.0 -> v0.2 keeps every number: ``router_probs`` become the softmax ``scores`` (float32
when every value is exactly a float32, else float64, unless a dtype is asked for) and
``topk_indices`` the ``selected`` experts; v0.1.0 records no mixing weights, so none are
written. v0.2 -> v0.1.0 rebuilds each layer with contract §3's arithmetic from the scores and
the recorded selection; it is refused, with the reason, for a run v0.1.0 cannot hold (sigmoid
or logit scores, a selection bias or expert groups, no scores, per-token data v0.1.0 has no
field for). A run converted to v0.2 and back is byte-identical to the original whenever its
derived numbers are contract §3's (every bundle inferoscope and the original library write).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.errors import RunBundleError, bundle_error
from .bundle.files import read_json_object
from .bundle.lines import iter_lines
from .bundle.reader import RunReader
from .bundle.writer import write_run_bundle
from .bundle.writer_v02 import RunWriter, default_array_paths
from .extraction.builders import layer_from_probs
from .jsonfmt import parse_json_bytes
from .routing import Routing
from .versions import (
    CONTINGENCY_FILE,
    DERIVED_FILE,
    MANIFEST_SCHEMA_VERSION,
    MANIFEST_V02_SCHEMA_VERSION,
    MOTIF_LEDGER_FILE,
    RAW_EVENT_SCHEMA_VERSION,
    RAW_EVENT_V02_SCHEMA_VERSION,
)

V01_MANIFEST = MANIFEST_SCHEMA_VERSION
V02_MANIFEST = MANIFEST_V02_SCHEMA_VERSION
V02_RAW = RAW_EVENT_V02_SCHEMA_VERSION
BLOCK_TOKENS = 512
DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")


class ConvertError(ValueError):
    """The run cannot be converted as asked; the message says why (one line)."""


@dataclass(slots=True)
class ConvertResult:
    path: Path
    to: str
    float_dtype: str | None = None
    notes: list[str] = field(default_factory=list)


def convert_run(
    source: Path | str, out_root: Path | str, *, to: str, dtype: str = "auto", run_id: str | None = None
) -> ConvertResult:
    """Write ``source`` as contract ``to`` ("v0.1" or "v0.2") under ``out_root/<run_id>``.

    The source must validate; the result is validated before it appears (atomic, as every
    write). Raises ConvertError for a run the target contract cannot hold, RunBundleError
    for an invalid source, FileExistsError if the target exists.
    """
    if to not in ("v0.1", "v0.2"):
        raise ConvertError(f"unknown target contract {to!r}: use v0.1 or v0.2")
    if dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    reader = RunReader(source)
    report = reader.validate(series=False)
    if not report.ok:
        raise bundle_error(f"refusing to convert {source}", report.issues, report.counts_by_code())
    assert reader.manifest is not None and reader.layout is not None
    if reader.profile == to:
        raise ConvertError(f"{source} already follows contract {to}")
    if to == "v0.2":
        return _to_v02(reader, Path(out_root), dtype, run_id)
    if dtype != "auto":
        raise ConvertError("--dtype applies to v0.2 output only (v0.1.0 stores decimal text)")
    return _to_v01(reader, Path(out_root), run_id)


# -- v0.1.0 -> v0.2 ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    layers: tuple[int, ...]
    groups: tuple[tuple[str, tuple[int, ...], int, int], ...]  # name, layers, experts, k


def _events_v01(reader: RunReader) -> Iterator[dict[str, Any]]:
    for line in iter_lines(reader.raw_path):
        if line.data is None:  # a valid bundle has none; kept for safety
            raise ConvertError(f"raw_trace.ndjson line {line.number} is too long to read")
        obj = parse_json_bytes(line.data)
        yield obj


def _shape_of(first: Mapping[str, Any]) -> _Shape:
    layers = sorted(first["layers"], key=lambda layer: layer["layer_index"])
    by_shape: dict[tuple[int, int], list[int]] = {}
    for layer in layers:
        by_shape.setdefault((layer["num_total_experts"], layer["num_active_experts"]), []).append(
            layer["layer_index"]
        )
    single = len(by_shape) == 1
    groups = tuple(
        ("moe" if single else f"e{n}k{k}", tuple(indices), n, k) for (n, k), indices in by_shape.items()
    )
    return _Shape(tuple(layer["layer_index"] for layer in layers), groups)


def _to_v02(reader: RunReader, out_root: Path, dtype: str, run_id: str | None) -> ConvertResult:
    manifest = dict(reader.manifest or {})
    count = len(reader)
    if count == 0:
        raise ConvertError("the run has no events: contract v0.2 needs at least one token to know its layers")
    first = next(_events_v01(reader))
    shape = _shape_of(first)
    chosen = dtype
    if chosen == "auto":
        chosen = "float32"
        for attempt in ("float32", "float64"):
            try:
                return _write_v02(reader, manifest, shape, out_root, attempt, run_id, exact_only=True)
            except _NotFloat32:
                continue
        raise AssertionError("unreachable")
    return _write_v02(reader, manifest, shape, out_root, chosen, run_id, exact_only=False)


class _NotFloat32(Exception):
    pass


def _write_v02(
    reader: RunReader,
    manifest: dict[str, Any],
    shape: _Shape,
    out_root: Path,
    float_dtype: str,
    run_id: str | None,
    *,
    exact_only: bool,
) -> ConvertResult:
    new = {key: value for key, value in manifest.items()}
    if run_id is not None:
        new["run_id"] = run_id
    new["schema_version"] = V02_MANIFEST
    new["artifact_versions"] = dict(manifest["artifact_versions"], raw_event_schema_version=V02_RAW)
    new["run_kind"] = "generate"
    groups = []
    for group_name, layers, experts, k in shape.groups:
        paths = default_array_paths(group_name)
        del paths["weights"]
        groups.append(
            {
                "name": group_name,
                "layers": list(layers),
                "num_experts": experts,
                "top_k": k,
                "score_function": "softmax",
                "selection": {"rule": "topk", "bias": False},
                "mixing": {"rule": "unchecked", "scale": 1.0, "name": "not recorded (contract v0.1.0)"},
                "shared_experts": 0,
                "arrays": paths,
            }
        )
    new["routing"] = {"float_dtype": float_dtype, "groups": groups}
    layout = dict(reader.layout or {})
    if run_id is not None:
        layout["run_id"] = run_id
    writer = RunWriter(out_root, new)
    try:
        metas: list[dict[str, Any]] = []
        block: dict[str, dict[str, list[np.ndarray]]] = {
            g[0]: {"selected": [], "scores": []} for g in shape.groups
        }
        for position, event in enumerate(_events_v01(reader)):
            by_index = {layer["layer_index"]: layer for layer in event["layers"]}
            if sorted(by_index) != list(shape.layers):
                raise ConvertError(
                    f"token {position} routes layers {sorted(by_index)}, "
                    f"token 0 routes {list(shape.layers)}: "
                    "contract v0.2 records every MoE layer for every token"
                )
            for group_name, group_layers, experts, k in shape.groups:
                rows = [by_index[i] for i in group_layers]
                if any(r["num_total_experts"] != experts or r["num_active_experts"] != k for r in rows):
                    raise ConvertError(
                        f"token {position}: a layer of group {group_name} changes its expert count or k; "
                        "contract v0.2 declares them once per group"
                    )
                probs = np.array([r["router_probs"] for r in rows], dtype=np.float64)
                if (
                    exact_only
                    and float_dtype == "float32"
                    and not np.array_equal(probs.astype(np.float32).astype(np.float64), probs)
                ):
                    raise _NotFloat32
                block[group_name]["scores"].append(probs)
                block[group_name]["selected"].append(
                    np.array([r["topk_indices"] for r in rows], dtype=np.int64)
                )
            meta = {key: value for key, value in event.items() if key != "layers"}
            meta["schema_version"] = V02_RAW
            if run_id is not None:
                meta["run_id"] = run_id
            metas.append(meta)
            if len(metas) >= BLOCK_TOKENS:
                _flush(writer, metas, block)
        _flush(writer, metas, block)
        extra = {
            file: reader.run_dir / file
            for file in (DERIVED_FILE, MOTIF_LEDGER_FILE, CONTINGENCY_FILE)
            if (reader.run_dir / file).exists()
        }
        if run_id is not None and extra:
            raise ConvertError("--run-id with derived artifacts: derive the converted run again instead")
        path = writer.close(layout, extra_files=extra)
    except BaseException:
        writer.abort()
        raise
    notes = [
        f"scores stored as {float_dtype}"
        + (
            " (every v0.1.0 value is exact in it)"
            if exact_only
            else " (as asked; rounding may change values)"
        ),
        "v0.1.0 records no mixing weights: none written (mixing rule: not recorded)",
    ]
    return ConvertResult(path, "v0.2", float_dtype, notes)


def _flush(
    writer: RunWriter, metas: list[dict[str, Any]], block: dict[str, dict[str, list[np.ndarray]]]
) -> None:
    if not metas:
        return
    routing = {name: {role: np.stack(rows) for role, rows in roles.items()} for name, roles in block.items()}
    writer.add_tokens(metas, routing)
    metas.clear()
    for roles in block.values():
        for rows in roles.values():
            rows.clear()


# -- v0.2 -> v0.1.0 ------------------------------------------------------------------------------


def v01_refusal(routing: Routing, manifest: Mapping[str, Any]) -> str | None:
    """Why contract v0.1.0 cannot hold this v0.2 run, or None when it can."""
    for group in routing.groups:
        if "scores" not in group.arrays:
            return (
                f"group {group.name!r} records no scores (top-k only); v0.1.0 needs every router probability"
            )
        if group.score_function != "softmax":
            return (
                f"group {group.name!r} has {group.score_function} scores; v0.1.0 can only state "
                "softmax probabilities"
            )
        if group.selection.bias or group.selection.rule != "topk":
            return (
                f"group {group.name!r} selects by {group.selection.describe()}; v0.1.0 states top-k of the "
                "probabilities only"
            )
        if "weights" in group.arrays and group.mixing.rule == "unchecked":
            return (
                f"group {group.name!r} records mixing weights by {group.mixing.describe()}; v0.1.0 has no "
                "field for them"
            )
        if any(role.startswith("prompt_") for role in group.arrays):
            return f"group {group.name!r} records prompt (prefill) routing; v0.1.0 has no field for it"
    if manifest.get("run_kind", "generate") != "generate":
        return f"run_kind is {manifest.get('run_kind')}; v0.1.0 holds generated tokens only"
    prompt = manifest.get("prompt")
    if isinstance(prompt, Mapping) and "token_ids" in prompt:
        return "prompt.token_ids is recorded; v0.1.0's prompt holds text only"
    return None


def _to_v01(reader: RunReader, out_root: Path, run_id: str | None) -> ConvertResult:
    manifest = dict(reader.manifest or {})
    routing = reader.routing
    assert routing is not None
    why = v01_refusal(routing, manifest)
    if why is not None:
        raise ConvertError(f"contract v0.1.0 cannot hold this run: {why}")
    sidecar = reader.sidecar()
    new = {key: value for key, value in manifest.items() if key not in ("routing", "arrays", "run_kind")}
    new["schema_version"] = V01_MANIFEST
    new["artifact_versions"] = dict(
        manifest["artifact_versions"], raw_event_schema_version=RAW_EVENT_SCHEMA_VERSION
    )
    if run_id is not None:
        new["run_id"] = run_id
    notes: list[str] = []
    if any("weights" in group.arrays for group in routing.groups):
        notes.append(
            "mixing weights not carried (v0.1.0 has no field); they follow from the declared rule: "
            + "; ".join(f"{g.name}: {g.mixing.describe()}" for g in routing.groups)
        )

    def events() -> Iterator[dict[str, Any]]:
        for position, line in enumerate(iter_lines(reader.raw_path)):
            assert line.data is not None
            meta = parse_json_bytes(line.data)
            for key in ("document_index", "source"):
                if key in meta:
                    raise ConvertError(f"token {position} has {key}; v0.1.0 has no field for it")
            if "timing_ms" not in meta:
                raise ConvertError(f"token {position} has no timing_ms, which v0.1.0 requires")
            layers = []
            for group in routing.groups:
                scores = sidecar.rows(group, "scores", position, position + 1)
                selected = sidecar.rows(group, "selected", position, position + 1)
                assert scores is not None and selected is not None
                for slot, layer_index in enumerate(group.layers):
                    probs = [float(p) for p in scores[0, slot].astype(np.float64)]
                    layers.append(layer_from_probs(layer_index, probs, [int(i) for i in selected[0, slot]]))
            layers.sort(key=lambda layer: layer["layer_index"])
            event = dict(meta, schema_version=RAW_EVENT_SCHEMA_VERSION, layers=layers)
            if run_id is not None:
                event["run_id"] = run_id
            yield event

    derived = _ndjson(reader.run_dir / DERIVED_FILE)
    ledger = _json(reader.run_dir / MOTIF_LEDGER_FILE)
    contingency = _json(reader.run_dir / CONTINGENCY_FILE)
    if run_id is not None and (derived is not None or ledger is not None or contingency is not None):
        raise ConvertError("--run-id with derived artifacts: derive the converted run again instead")
    layout = dict(reader.layout or {})
    if run_id is not None:
        layout["run_id"] = run_id
    try:
        path = write_run_bundle(out_root, new, events(), layout, derived, ledger, contingency)
    except RunBundleError:
        raise
    return ConvertResult(path, "v0.1", None, notes)


def _ndjson(path: Path) -> Iterator[Any] | None:
    if not path.exists():
        return None
    return (parse_json_bytes(line.data) for line in iter_lines(path) if line.data is not None)


def _json(path: Path) -> dict[str, Any] | None:
    obj, _issues = read_json_object(path, "artifact", required=False)
    return obj
