"""Write a capture as a contract v0.2 bundle: the router's own selection and mixing weights,
its softmax scores over every expert, and the full routing of every prompt position.

Nothing is recomputed in place of what the router returned. The rules declared in the
manifest (selection, mixing) are the ones the recorded numbers follow, found by testing the
declared candidates on every recorded position (prompt and generated) and refused or named
"unchecked" when none fits; the validator checks them again on the written bundle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.writer_v02 import default_array_paths, write_run_bundle_v02
from ..extraction.builders import build_layer_grid_layout, build_manifest
from ..routing import DEFAULT_TOLERANCE, Mixing, Selection, expected_weights, selection_violations
from ..versions import V02_ARTIFACT_VERSIONS
from .errors import CaptureError
from .hooks import RouterCapture

DERIVATION_VERSION = "motifs/v0.1.0-alpha"
DERIVATION_CONFIG_ID = "motifs/default-alpha"
#: the model's compute dtype -> the tolerance its router's numbers are checked with
MODEL_TOLERANCE = {"float32": 1e-5, "float64": 1e-6, "bfloat16": 1.6e-2, "float16": 2e-3}


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (the router's logits as it returned them)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=-1, keepdims=True)
    return out


def write_v02(
    model: Any,
    tokenizer: Any,
    capture: RouterCapture,
    generated: list[int],
    *,
    prompt: str,
    prompt_ids: list[int],
    out: Path,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    generation_config: dict[str, Any],
    seed: int | None,
    store_dtype: str,
) -> Path:
    steps = capture.steps[: len(generated)]
    first = capture.steps[0]
    if first.prefill_logits is None or first.prefill_selected is None:
        raise CaptureError("the first forward pass was not the prompt's; cannot separate prefill")
    logits = np.stack([step.logits for step in steps])  # [T, L, E]
    selected = np.stack([step.selected for step in steps])  # [T, L, k]
    step_weights = [step.weights for step in steps if step.weights is not None]
    has_weights = len(step_weights) == len(steps) and first.prefill_weights is not None
    weights = np.stack(step_weights) if has_weights else None
    prompt_logits = first.prefill_logits.transpose(1, 0, 2)  # [P, L, E]
    prompt_selected = first.prefill_selected.transpose(1, 0, 2)
    prompt_weights = first.prefill_weights.transpose(1, 0, 2) if has_weights else None  # type: ignore[union-attr]
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    tol = max(MODEL_TOLERANCE.get(dtype, 1e-5), DEFAULT_TOLERANCE[store_dtype])
    scores, prompt_scores = softmax_rows(logits), softmax_rows(prompt_logits)
    router_class = type(capture.sites[0].module).__name__
    _check_selection(scores, selected, prompt_scores, prompt_selected, tol, capture.layer_indices)
    mixing = _mixing_rule(
        np.concatenate([scores.reshape(-1, scores.shape[-1]), prompt_scores.reshape(-1, scores.shape[-1])]),
        np.concatenate(
            [selected.reshape(-1, selected.shape[-1]), prompt_selected.reshape(-1, selected.shape[-1])]
        ),
        None
        if weights is None or prompt_weights is None
        else np.concatenate(
            [weights.reshape(-1, weights.shape[-1]), prompt_weights.reshape(-1, weights.shape[-1])]
        ),
        _scales(model),
        tol,
        router_class,
    )
    layers = capture.layer_indices
    experts, k = scores.shape[-1], selected.shape[-1]
    paths = default_array_paths("moe", prompt=True)
    if weights is None:
        del paths["weights"], paths["prompt_weights"]
    manifest = build_manifest(
        run_id=run_id,
        model_id=model_id,
        tokenizer_id=tokenizer_id,
        prompt_text=prompt,
        derivation_version=DERIVATION_VERSION,
        derivation_config_id=DERIVATION_CONFIG_ID,
        generation_config=generation_config,
        capture_config=_capture_config(model, capture, dtype, router_class),
        seed=seed,
    )
    manifest.update(
        schema_version="manifest/v0.2.0",
        artifact_versions=dict(V02_ARTIFACT_VERSIONS),
        prompt={"text": prompt, "token_ids": prompt_ids},
        run_kind="generate",
        routing={
            "float_dtype": store_dtype,
            "tolerance": tol,
            "groups": [
                {
                    "name": "moe",
                    "layers": layers,
                    "num_experts": experts,
                    "top_k": k,
                    "score_function": "softmax",
                    "selection": {"rule": "topk", "bias": False},
                    "mixing": {
                        "rule": mixing.rule,
                        "scale": mixing.scale,
                        **({"name": mixing.name} if mixing.name else {}),
                    },
                    "shared_experts": _shared_experts(model),
                    "arrays": paths,
                }
            ],
        },
    )
    prompt_length = len(prompt_ids)
    events = [
        {
            "event_type": "token_complete",
            "schema_version": "raw/v0.2.0",
            "run_id": run_id,
            "token_index": t,
            "token_id": token_id,
            "token_text": tokenizer.decode([token_id]),
            "context_length": prompt_length + t,
            "timing_ms": {
                "decode_start": step.start_ms,
                "decode_end": step.end_ms,
                "decode_duration": step.end_ms - step.start_ms,
            },
        }
        for t, (token_id, step) in enumerate(zip(generated, steps, strict=False))
    ]
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="default-grid", layer_expert_counts=[(i, experts) for i in layers]
    )
    routing = {"selected": selected, "scores": scores}
    prompt_routing = {"selected": prompt_selected, "scores": prompt_scores}
    if weights is not None and prompt_weights is not None:
        routing["weights"], prompt_routing["weights"] = weights, prompt_weights
    return write_run_bundle_v02(
        out, manifest, events, layout, {"moe": routing}, prompt_routing={"moe": prompt_routing}
    )


def _check_selection(
    scores: np.ndarray,
    selected: np.ndarray,
    prompt_scores: np.ndarray,
    prompt_selected: np.ndarray,
    tol: float,
    layers: list[int],
) -> None:
    """Refuse a family whose router does not pick the top-k of its softmax scores."""
    rule = Selection("topk", False)
    for name, s, sel in (("token", scores, selected), ("prompt position", prompt_scores, prompt_selected)):
        _rows, lg, e = s.shape
        bad, winners = selection_violations(s.reshape(-1, e), sel.reshape(-1, sel.shape[-1]), rule, tol)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            where, slot = divmod(row, lg)
            raise CaptureError(
                f"{name} {where}, layer {layers[slot]}: the router chose experts "
                f"{sorted(int(x) for x in sel.reshape(-1, sel.shape[-1])[row])} although expert "
                f"{int(winners[row])} has a higher softmax score. This family does not route by "
                "softmax-then-top-k (a selection bias or expert groups outside the router); "
                "inferoscope refuses rather than record a rule the model does not follow."
            )


def _scales(model: Any) -> list[float]:
    config = getattr(model, "config", None)
    scale = getattr(config, "routed_scaling_factor", None)
    scales = [1.0]
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0:
        scales.append(float(scale))
    return scales


def _mixing_rule(
    scores: np.ndarray,
    selected: np.ndarray,
    weights: np.ndarray | None,
    scales: list[float],
    tol: float,
    router_class: str,
) -> Mixing:
    """The declared rule that reproduces every recorded weight, or ``unchecked`` (named)."""
    if weights is None:
        return Mixing("unchecked", 1.0, f"{router_class} returns no mixing weights")
    chosen = np.take_along_axis(scores, selected, axis=1)
    for scale in scales:
        for rule in ("gather", "renormalize"):
            candidate = Mixing(rule, scale)
            expected = expected_weights(chosen, candidate)
            assert expected is not None
            if (np.abs(weights - expected) <= tol * np.maximum(1.0, np.abs(expected))).all():
                return candidate
    return Mixing("unchecked", 1.0, f"{router_class} (its weights follow none of the declared rules)")


def _shared_experts(model: Any) -> int:
    config = getattr(model, "config", None)
    for name in ("n_shared_experts", "num_shared_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if getattr(config, "shared_expert_intermediate_size", 0):
        return 1
    return 0


def _capture_config(model: Any, capture: RouterCapture, dtype: str, router_class: str) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "adapter": "transformers-router-hooks",
        "model_type": getattr(config, "model_type", None),
        "router_class": router_class,
        "router_modules": [site.name for site in capture.sites],
        "moe_layer_indices": capture.layer_indices,
        "scores": "softmax over all experts of the router's logits (float64, stored as the routing dtype)",
        "selected_and_weights": "exactly as the router module returned them, in its order",
        "norm_topk_prob": getattr(config, "norm_topk_prob", None),
        "dtype": dtype,
        "device": str(next(model.parameters()).device),
    }
