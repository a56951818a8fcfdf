"""Write a capture as a contract v0.2 bundle: the router's own selection and mixing weights,
its softmax scores over every expert, and the full routing of every prompt position.

Nothing is recomputed in place of what the router returned. The rules declared in the
manifest (selection, mixing) are the ones the recorded numbers follow, found by testing the
declared candidates on every recorded position (prompt and generated) and refused or named
"unchecked" when none fits; the validator checks them again on the written bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.writer_v02 import default_array_paths, write_run_bundle_v02
from ..extraction.builders import build_layer_grid_layout, build_manifest
from ..routing import DEFAULT_TOLERANCE
from ..versions import V02_ARTIFACT_VERSIONS
from .errors import CaptureError
from .hooks import RouterCapture
from .rules import RouterRule, find_bias, find_rule, hints_of, probe_router

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
    layers = capture.layer_indices
    sites = [site.site for site in capture.sites]
    rules = _layer_rules(
        model, capture, logits, selected, weights, prompt_logits, prompt_selected, prompt_weights, tol
    )
    router_class = type(capture.sites[0].module).__name__
    groups, routing, prompt_routing, biases = _groups(
        layers,
        sites,
        rules,
        logits,
        selected,
        weights,
        prompt_logits,
        prompt_selected,
        prompt_weights,
        _shared_experts(model),
    )
    manifest = build_manifest(
        run_id=run_id,
        model_id=model_id,
        tokenizer_id=tokenizer_id,
        prompt_text=prompt,
        derivation_version=DERIVATION_VERSION,
        derivation_config_id=DERIVATION_CONFIG_ID,
        generation_config=generation_config,
        capture_config=_capture_config(model, capture, dtype, router_class, rules),
        seed=seed,
    )
    manifest.update(
        schema_version="manifest/v0.2.0",
        artifact_versions=dict(V02_ARTIFACT_VERSIONS),
        prompt={"text": prompt, "token_ids": prompt_ids},
        run_kind="generate",
        routing={"float_dtype": store_dtype, "tolerance": tol, "groups": groups},
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
    experts_of: dict[int, int] = {}
    for slot, layer in enumerate(layers):  # a layer routed at two places: its larger expert count
        experts_of[layer] = max(experts_of.get(layer, 0), rules[slot][1].shape[-1])
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="default-grid", layer_expert_counts=sorted(experts_of.items())
    )
    return write_run_bundle_v02(
        out, manifest, events, layout, routing, bias=biases or None, prompt_routing=prompt_routing
    )


LayerRule = tuple[RouterRule, np.ndarray, np.ndarray | None]  # the rule, a logits row, the bias


def _layer_rules(
    model: Any,
    capture: RouterCapture,
    logits: np.ndarray,
    selected: np.ndarray,
    weights: np.ndarray | None,
    prompt_logits: np.ndarray,
    prompt_selected: np.ndarray,
    prompt_weights: np.ndarray | None,
    tol: float,
) -> dict[int, LayerRule]:
    """Per MoE layer, the declared rule its router follows on every recorded position; a
    CaptureError naming the layer when no declared rule reproduces its selection."""
    config = getattr(model, "config", None)
    found: dict[int, LayerRule] = {}
    for slot, site in enumerate(capture.sites):
        rows_logits = np.concatenate([prompt_logits[:, slot], logits[:, slot]])
        rows_selected = np.concatenate([prompt_selected[:, slot], selected[:, slot]])
        rows_weights = (
            None
            if weights is None or prompt_weights is None
            else np.concatenate([prompt_weights[:, slot], weights[:, slot]])
        )
        experts = rows_logits.shape[-1]
        parent = model.get_submodule(site.name.rsplit(".", 1)[0]) if "." in site.name else None
        bias_found = find_bias(site.module, parent, experts)
        bias = None if bias_found is None else bias_found[1]
        hints = hints_of(site.module, config, bias)
        probe = (
            None if site.hashed else probe_router(site.module, parent, int(getattr(config, "hidden_size", 0)))
        )
        if (
            probe is not None
            and probe[0].shape[-1] == experts
            and probe[2].shape[-1] == rows_selected.shape[-1]
        ):
            rows_logits = np.concatenate([rows_logits, probe[0]])
            rows_selected = np.concatenate([rows_selected, probe[2]])
            if rows_weights is not None:
                rows_weights = None if probe[1] is None else np.concatenate([rows_weights, probe[1]])
        rule = find_rule(rows_logits, rows_selected, rows_weights, bias, hints, tol, hashed=site.hashed)
        if rule is None:
            raise CaptureError(
                f"layer {site.layer_index} ({type(site.module).__name__}): no declared routing rule "
                "(softmax or sigmoid scores; top-k, with or without a selection bias, or limited to "
                "expert groups) reproduces the experts the router chose on every position; "
                "inferoscope refuses rather than record a rule the model does not follow"
            )
        found[slot] = (rule, rows_logits[:1], bias if rule.selection.bias else None)
    return found


def _groups(
    layers: list[int],
    sites: list[str],
    rules: dict[int, LayerRule],
    logits: np.ndarray,
    selected: np.ndarray,
    weights: np.ndarray | None,
    prompt_logits: np.ndarray,
    prompt_selected: np.ndarray,
    prompt_weights: np.ndarray | None,
    shared_experts: int,
    with_prompt: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Layers with one shape and one rule form a group (most models: one group)."""
    keys: dict[Any, list[int]] = {}
    for slot, _layer in enumerate(layers):
        rule, row, bias = rules[slot]
        key = (rule, row.shape[-1], selected.shape[-1], bias is not None, sites[slot])
        keys.setdefault(key, []).append(slot)
    groups, routing, prompt_routing, biases = [], {}, {}, {}
    for number, ((rule, experts, k, has_bias, site), slots) in enumerate(keys.items()):
        name = "moe" if len(keys) == 1 else f"moe{number}"
        paths = default_array_paths(name, prompt=with_prompt, bias=has_bias)
        if weights is None:
            paths.pop("weights")
            paths.pop("prompt_weights", None)
        selection: dict[str, Any] = {"rule": rule.selection.rule, "bias": rule.selection.bias}
        if rule.selection.rule == "group_limited_topk":
            selection.update(
                n_group=rule.selection.n_group,
                topk_group=rule.selection.topk_group,
                group_score=rule.selection.group_score,
            )
        groups.append(
            {
                "name": name,
                "layers": [layers[s] for s in slots],
                "num_experts": int(experts),
                "top_k": int(k),
                "score_function": rule.score_function,
                "selection": selection,
                "mixing": {
                    "rule": rule.mixing.rule,
                    "scale": rule.mixing.scale,
                    **({"name": rule.mixing.name} if rule.mixing.name else {}),
                    **({"transform": rule.mixing.transform} if rule.mixing.transform != "none" else {}),
                },
                "shared_experts": shared_experts,
                "arrays": paths,
                **({"site": site} if site != "mlp" else {}),
            }
        )
        routing[name] = {"selected": selected[:, slots], "scores": rule.scores(logits[:, slots])}
        if weights is not None:
            routing[name]["weights"] = weights[:, slots]
        if with_prompt:
            prompt_routing[name] = {
                "selected": prompt_selected[:, slots],
                "scores": rule.scores(prompt_logits[:, slots]),
            }
            if prompt_weights is not None:
                prompt_routing[name]["weights"] = prompt_weights[:, slots]
        if has_bias:
            biases[name] = np.stack([rules[s][2] for s in slots])  # type: ignore[misc]
    return groups, routing, prompt_routing, biases


def _shared_experts(model: Any) -> int:
    config = getattr(model, "config", None)
    for name in ("n_shared_experts", "num_shared_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if getattr(config, "shared_expert_intermediate_size", 0):
        return 1
    return 0


def _capture_config(
    model: Any, capture: RouterCapture, dtype: str, router_class: str, rules: dict[int, LayerRule]
) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "adapter": "transformers-router-hooks",
        "model_type": getattr(config, "model_type", None),
        "router_class": router_class,
        "router_modules": [site.name for site in capture.sites],
        "moe_layer_indices": capture.layer_indices,
        "scores": "the router's own logits through its score function (softmax or sigmoid, in float64, "
        "stored as the routing dtype)",
        "rule_evidence": "every declared rule reproduces the router's selection on every recorded "
        "position (prompt and generated) and on 512 random positions fed to each router directly, "
        "within the routing tolerance (probes choose the rule; none is written)",
        "selected_and_weights": "exactly as the router module returned them, in its order",
        "norm_topk_prob": getattr(config, "norm_topk_prob", None),
        "dtype": dtype,
        "device": str(next(model.parameters()).device),
    }
