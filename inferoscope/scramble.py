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
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.loader import load_run_bundle
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
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(events)
    if variant == "tokens":
        layer_ids = sorted({layer["layer_index"] for event in out for layer in event["layers"]})
        for layer_index in layer_ids:
            holders = [
                (e, i) for e in out for i, la in enumerate(e["layers"]) if la["layer_index"] == layer_index
            ]
            entries = [copy.deepcopy(event["layers"][i]) for event, i in holders]
            for (event, i), j in zip(holders, rng.permutation(len(entries)), strict=True):
                event["layers"][i] = entries[j]
        return out
    for event in out:
        for layer in event["layers"]:
            n = len(layer["router_probs"])
            new_label = rng.permutation(n)  # expert i is called new_label[i]
            probs = [0.0] * n
            for old, value in enumerate(layer["router_probs"]):
                probs[int(new_label[old])] = value
            layer["router_probs"] = probs
            layer["topk_indices"] = [int(new_label[i]) for i in layer["topk_indices"]]
    return out


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
    bundle = load_run_bundle(run_dir)
    manifest = copy.deepcopy(bundle["manifest"])
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
    events = scrambled_events(bundle["raw_events"], variant, seed)
    for event in events:
        event["run_id"] = new_id
    layout = copy.deepcopy(bundle["layout"])
    layout["run_id"] = new_id
    return write_run_bundle(out_root, manifest, events, layout)


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
    threshold = _source_threshold(source)
    if threshold is not False:
        write_derived(made, threshold=threshold)
    return made


def _source_threshold(source: Path) -> float | bool | None:
    """The matcher threshold of the run's derived motifs (None: exact), or False if it has none."""
    ledger_path = source / "motif_ledger.json"
    if not (source / "derived.ndjson").is_file() or not ledger_path.is_file():
        return False
    try:
        payload = json.loads(ledger_path.read_text(encoding="utf-8")).get("ledger_payload") or {}
    except (OSError, ValueError, AttributeError):
        return False
    threshold = payload.get("threshold") if isinstance(payload, dict) else None
    return float(threshold) if isinstance(threshold, (int, float)) else None
