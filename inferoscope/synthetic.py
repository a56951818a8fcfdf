"""Seeded synthetic contract v0.2 runs, for tests and benchmarks (never a capture: the manifest's
model_id says ``synthetic/...``). Two router families are simulated exactly by their rules:

- ``softmax``: OLMoE/Mixtral-style, softmax scores, top-k, weights renormalised (or gathered);
- ``deepseek``: DeepSeek-V3-style, sigmoid scores, top-k of scores + bias within the best
  ``topk_group`` of ``n_group`` groups (group score: sum of its top two), weights renormalised
  and scaled.

Written block by block through the streaming writer, so a 500,000-token run costs a block of
memory, not the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bundle.writer_v02 import RunWriter, default_array_paths
from .extraction.builders import build_layer_grid_layout
from .versions import V02_ARTIFACT_VERSIONS

BLOCK = 1024


def v02_manifest(run_id: str, groups: list[dict[str, Any]], float_dtype: str = "float32") -> dict[str, Any]:
    return {
        "schema_version": "manifest/v0.2.0",
        "run_id": run_id,
        "created_at": "2026-11-27T12:00:00Z",
        "model_id": "synthetic/router",
        "tokenizer_id": "synthetic/tokenizer",
        "prompt": {"text": "synthetic"},
        "artifact_versions": dict(V02_ARTIFACT_VERSIONS),
        "derivation_version": "motifs/v0.1.0-alpha",
        "derivation_config_id": "motifs/default-alpha",
        "run_kind": "generate",
        "routing": {"float_dtype": float_dtype, "groups": groups},
    }


def route_block(
    rng: np.random.Generator,
    tokens: int,
    layers: int,
    experts: int,
    top_k: int,
    router: str,
    bias: np.ndarray | None = None,
    n_group: int = 4,
    topk_group: int = 2,
    scale: float = 2.5,
    renormalize: bool = True,
) -> dict[str, np.ndarray]:
    """``selected``, ``weights`` and ``scores`` of ``tokens`` x ``layers`` rows by the router's rule."""
    logits = rng.standard_normal((tokens, layers, experts)).astype(np.float32) * 1.5
    if router == "softmax":
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)
        selected = np.argsort(-scores, axis=-1, kind="stable")[..., :top_k]
        chosen = np.take_along_axis(scores, selected, axis=-1).astype(np.float64)
        weights = chosen / chosen.sum(axis=-1, keepdims=True) if renormalize else chosen
        return {"selected": selected, "weights": weights.astype(np.float32), "scores": scores}
    if router != "deepseek" or bias is None:
        raise ValueError(f"unknown router {router!r} (or a deepseek router without its bias)")
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    keys = scores + bias[None]
    per = experts // n_group
    group_scores = np.sort(keys.reshape(tokens, layers, n_group, per), axis=-1)[..., -2:].sum(axis=-1)
    best = np.argsort(-group_scores, axis=-1, kind="stable")[..., :topk_group]
    allowed = np.zeros((tokens, layers, n_group), dtype=bool)
    np.put_along_axis(allowed, best, True, axis=-1)
    masked = np.where(np.repeat(allowed, per, axis=-1), keys, -np.inf)
    selected = np.argsort(-masked, axis=-1, kind="stable")[..., :top_k]
    chosen = np.take_along_axis(scores, selected, axis=-1).astype(np.float64)
    weights = chosen / (chosen.sum(axis=-1, keepdims=True) + 1e-20) * scale
    return {"selected": selected, "weights": weights.astype(np.float32), "scores": scores}


def write_synthetic_v02(
    root: Path | str,
    run_id: str,
    tokens: int,
    *,
    layers: int = 16,
    experts: int = 64,
    top_k: int = 8,
    router: str = "softmax",
    float_dtype: str = "float32",
    seed: int = 7,
    first_layer: int = 0,
) -> Path:
    """A valid v0.2 run of ``tokens`` tokens (OLMoE-shaped by default); returns its folder."""
    rng = np.random.default_rng(seed)
    layer_indices = list(range(first_layer, first_layer + layers))
    bias = rng.standard_normal((layers, experts)).astype(np.float32) * 0.3 if router == "deepseek" else None
    if router == "deepseek":
        selection: dict[str, Any] = {
            "rule": "group_limited_topk",
            "bias": True,
            "n_group": 4,
            "topk_group": 2,
            "group_score": "top2_sum",
        }
        mixing: dict[str, Any] = {"rule": "renormalize", "scale": 2.5}
        score_function = "sigmoid"
    else:
        selection = {"rule": "topk", "bias": False}
        mixing = {"rule": "renormalize", "scale": 1.0}
        score_function = "softmax"
    group = {
        "name": "moe",
        "layers": layer_indices,
        "num_experts": experts,
        "top_k": top_k,
        "score_function": score_function,
        "selection": selection,
        "mixing": mixing,
        "shared_experts": 1 if router == "deepseek" else 0,
        "arrays": default_array_paths("moe", bias=bias is not None),
    }
    manifest = v02_manifest(run_id, [group], float_dtype)
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="default-grid", layer_expert_counts=[(i, experts) for i in layer_indices]
    )
    writer = RunWriter(root, manifest)
    try:
        for start in range(0, tokens, BLOCK):
            count = min(BLOCK, tokens - start)
            routed = route_block(rng, count, layers, experts, top_k, router, bias)
            metas = [
                {
                    "event_type": "token_complete",
                    "schema_version": "raw/v0.2.0",
                    "run_id": run_id,
                    "token_index": t,
                    "token_id": int(rng.integers(0, 50_000)),
                    "token_text": f" tok{t}",
                    "context_length": 12 + t,
                    "timing_ms": {
                        "decode_start": 25.0 * t,
                        "decode_end": 25.0 * t + 12.5,
                        "decode_duration": 12.5,
                    },
                }
                for t in range(start, start + count)
            ]
            writer.add_tokens(metas, {"moe": routed})
        return writer.close(layout, bias=None if bias is None else {"moe": bias})
    except BaseException:
        writer.abort()
        raise
