"""Null models of a run, written as ordinary bundles so they go through the same reader, checks
and views as the real run (a person comparing both sees the same kind of picture).

``tokens``: within each MoE layer, the layer entries are shuffled across tokens (a seeded
permutation per layer): every layer keeps exactly its routing vectors, but which token they belong
to is random. ``experts``: for every token and layer, the expert labels are permuted (a seeded
permutation each time): every distribution keeps its shape and sharpness, but which expert is
which is random. The manifest says ``SCRAMBLED`` in its run_id and ``capture_config.scrambled``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.loader import not_found, open_valid_reader
from .bundle.reader import BundleOpenError, RunReader
from .bundle.writer import write_run_bundle

VARIANTS = ("tokens", "experts")
MEANING = {
    "tokens": "each MoE layer's routing entries shuffled across tokens (per-layer permutation)",
    "experts": "expert labels permuted independently for every token and layer",
}


def scrambled_events(events: list[dict[str, Any]], variant: str, seed: int) -> list[dict[str, Any]]:
    """A scrambled copy of ``events`` (the input is not modified)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown scramble variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    copied = copy.deepcopy(events)
    return list(_scrambled(lambda: iter(copied), variant, seed))


def _scrambled(
    events: Callable[[], Iterator[dict[str, Any]]], variant: str, seed: int
) -> Iterator[dict[str, Any]]:
    """Scrambled events, one at a time. ``events()`` yields fresh (mutable) events in order and
    may be called twice: the token scramble reads the run once to gather each layer's entries."""
    rng = np.random.default_rng(seed)
    if variant == "experts":
        for event in events():
            for layer in event["layers"]:
                _permute_experts(layer, rng)
            yield event
        return
    columns: dict[int, _LayerColumns] = {}
    for event in events():
        for layer in event["layers"]:
            columns.setdefault(layer["layer_index"], _LayerColumns()).add(layer)
    # one permutation per layer, drawn in layer order: output slot h of a layer gets entry perm[h]
    permutations = {index: rng.permutation(len(columns[index])) for index in sorted(columns)}
    for column in columns.values():
        column.freeze()
    slots: dict[int, int] = dict.fromkeys(columns, 0)
    for event in events():
        layers = []
        for layer in event["layers"]:
            index = layer["layer_index"]
            layers.append(columns[index].entry(int(permutations[index][slots[index]])))
            slots[index] += 1
        event["layers"] = layers
        yield event


def _permute_experts(layer: dict[str, Any], rng: np.random.Generator) -> None:
    n = len(layer["router_probs"])
    new_label = rng.permutation(n)  # expert i is called new_label[i]
    probs = [0.0] * n
    for old, value in enumerate(layer["router_probs"]):
        probs[int(new_label[old])] = value
    layer["router_probs"] = probs
    layer["topk_indices"] = [int(new_label[i]) for i in layer["topk_indices"]]


class _LayerColumns:
    """Every entry of one MoE layer, held as arrays (a 50,000-token OLMoE layer is ~30 MB, not GBs).

    Numbers keep their JSON kind: columns of integers stay integers, other numbers are float64
    (exact for every value a bundle can hold); anything else is kept as it is.
    """

    def __init__(self) -> None:
        self.parts: dict[str, list[Any]] = {}
        self.keys: list[str] = []
        self.count = 0
        self.arrays: dict[str, Any] = {}
        self.kinds: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.count

    def add(self, layer: dict[str, Any]) -> None:
        if not self.keys:  # a valid bundle's layer entries share one shape: decided on the first
            self.keys = list(layer)
            self.parts = {key: [] for key in self.keys}
            self.kinds = {key: _kind(layer[key]) for key in self.keys}
        for key in self.keys:
            value, kind = layer[key], self.kinds[key]
            if kind is np.int64 and _kind(value) is not np.int64:  # e.g. a one-hot router came first
                self.kinds[key] = kind = np.float64
            self.parts[key].append(value)
        self.count += 1

    def freeze(self) -> None:
        for key, values in self.parts.items():
            kind = self.kinds[key]
            if kind is not None and len({len(v) if isinstance(v, list) else -1 for v in values}) == 1:
                self.arrays[key] = np.asarray(values, dtype=kind)
            else:
                self.arrays[key] = values
        self.parts = {}

    def entry(self, row: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.keys:
            column = self.arrays[key]
            value = column[row]
            out[key] = (
                value.tolist()
                if isinstance(value, np.ndarray)
                else (value.item() if isinstance(value, np.generic) else copy.deepcopy(value))
            )
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> Any:
    """The array type for a field: int64 for integers, float64 for other numbers, None: keep as is."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(_is_number(v) for v in items):
        return None
    return np.int64 if all(type(v) is int for v in items) else np.float64


def scramble_bundle(
    run_dir: Path | str,
    out_root: Path | str,
    variant: str = "tokens",
    seed: int = 0,
    run_id: str | None = None,
) -> Path:
    """Write the scrambled twin of a valid bundle under ``out_root``; returns its directory."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown scramble variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    try:
        reader = RunReader(run_dir)
    except BundleOpenError as exc:
        raise not_found(exc, run_dir) from None
    beside = isinstance((reader.manifest or {}).get("run_id"), str) and (
        reader.profile == "v0.1" or reader.routing is not None
    )
    if not beside:  # checked first; otherwise the source is checked beside the writer
        reader = open_valid_reader(run_dir)
    manifest = copy.deepcopy(reader.manifest or {})
    source = manifest["run_id"]
    new_id = run_id or f"{source}-SCRAMBLED-{variant}-seed{seed}"
    manifest["run_id"] = new_id
    manifest["capture_config"] = {
        **(manifest.get("capture_config") or {}),
        "scrambled": {
            "variant": variant,
            "seed": seed,
            "source_run_id": source,
            "meaning": MEANING[variant],
        },
    }

    if reader.profile == "v0.2":
        from .bundle.loader import ValidationBeside
        from .scramble_v02 import scramble_v02

        with ValidationBeside(run_dir) as check:
            return scramble_v02(reader, manifest, Path(out_root), variant, seed, new_id, verify=check.wait)

    layout = copy.deepcopy(reader.layout or {})
    layout["run_id"] = new_id
    from .scramble_v01 import Unusual, scramble_v01_fast

    try:
        return scramble_v01_fast(reader, manifest, layout, Path(out_root), variant, seed)
    except Unusual:  # a run the fast writer cannot write byte for byte: event by event
        reader = open_valid_reader(run_dir)

    def read_all() -> Iterator[dict[str, Any]]:
        return (reader.event(i) for i in range(len(reader)))

    def events() -> Iterator[dict[str, Any]]:  # streamed: the twin is never held in memory
        for event in _scrambled(read_all, variant, seed):
            event["run_id"] = new_id
            yield event

    return write_run_bundle(out_root, manifest, events(), layout)


def default_cache_root() -> Path:
    """Where scrambled twins are kept between sessions ($XDG_CACHE_HOME/inferoscope/scrambled)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inferoscope" / "scrambled"


def scrambled_twin(
    run_dir: Path | str, variant: str, seed: int = 0, cache_root: Path | str | None = None
) -> Path:
    """The scrambled twin of a valid run, made once and reused: same seed, same bundle.

    When the run carries derived motifs, the twin is derived with the same matcher, so both go
    through the same derivation and the same views. Keyed by the run's path, size, modification
    time, variant and seed; a changed run gets a new twin.
    """
    from .derive import write_derived  # derive imports the loader; keep this module light

    source = Path(run_dir).resolve()
    stat = (source / "raw_trace.ndjson").stat()
    key = f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{variant}|{seed}"
    folder = Path(cache_root or default_cache_root()) / hashlib.sha256(key.encode()).hexdigest()[:16]
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    run_id = f"{manifest.get('run_id', 'run')}-SCRAMBLED-{variant}-seed{seed}"
    target = folder / run_id
    if target.is_dir():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    made = scramble_bundle(source, folder, variant, seed=seed, run_id=run_id)
    matcher = _source_matcher(source)
    if matcher is not None:
        write_derived(made, threshold=matcher[0], cap=matcher[1])
    return made


def _source_matcher(source: Path) -> tuple[float | None, int | None] | None:
    """(threshold, cap) of the matcher of the run's derived motifs (threshold None: exact; cap
    None: every motif a candidate), or None if it has none."""
    ledger_path = source / "motif_ledger.json"
    if not (source / "derived.ndjson").is_file() or not ledger_path.is_file():
        return None
    try:
        payload = json.loads(ledger_path.read_text(encoding="utf-8")).get("ledger_payload") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(payload, dict):
        return None, None
    threshold = payload.get("threshold")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        return None, None
    cap = re.search(r"-cap(\d+)$", str(payload.get("matching_rule", "")))
    return float(threshold), int(cap.group(1)) if cap else None
