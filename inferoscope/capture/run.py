"""``capture_run``: generate with a real model and write every token's routing as a bundle."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..extraction.builders import build_moe_layer_from_selection
from ..extraction.recorder import PyTorchRunBundleRecorder
from ..run_ids import run_dir_for
from ..versions import FLOAT_TOLERANCE
from .errors import CaptureError
from .hooks import RouterCapture, StepRouting
from .v02 import write_v02

DERIVATION_VERSION = "motifs/v0.1.0-alpha"
DERIVATION_CONFIG_ID = "motifs/default-alpha"

#: how each family turns the selected experts' logits into mixing weights (for capture_config)
_WEIGHT_RULES = {
    "GptOssTopKRouter": "softmax over the k selected logits",
    "GraniteMoeTopKRouter": "softmax over the k selected logits",
}


def capture_run(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    out: Path | str = "runs",
    run_id: str | None = None,
    do_sample: bool = False,
    seed: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    min_new_tokens: int | None = None,
    model_id: str | None = None,
    tokenizer_id: str | None = None,
    on_step: Callable[[int], None] | None = None,
    contract: str = "v0.2",
    store_dtype: str = "float32",
) -> Path:
    """Generate from ``prompt`` (greedy unless ``do_sample``) and write a validated bundle.

    Each event holds the routing of the forward pass that produced that token (the last
    position): the experts the router chose, in its order. ``contract="v0.2"`` (the default)
    also records the mixing weights the router returned and the softmax scores of every expert
    in ``store_dtype`` array files, and the full routing of every prompt position apart from the
    events; ``"v0.1"`` writes NDJSON (prefill top-k in ``capture_config["prefill_routing"]``).
    ``on_step`` is called after each forward pass with the number of tokens so far. Returns the
    bundle directory.
    """
    import torch

    if contract not in ("v0.1", "v0.2"):
        raise CaptureError(f"unknown contract {contract!r}: use v0.1 or v0.2")

    if not isinstance(prompt, str) or not prompt.strip():
        raise CaptureError("the prompt is empty")
    if max_new_tokens < 1:
        raise CaptureError("max_new_tokens must be at least 1")
    capture = RouterCapture(model, on_step=on_step)  # CaptureError for a model without routers
    if contract == "v0.1":
        _refuse_biased_selection(capture)
        if len(set(capture.layer_indices)) != len(capture.layer_indices):
            raise CaptureError(
                "this model routes some layers at two places (attention and MLP experts); contract "
                "v0.1.0 holds one router per layer: capture it as v0.2 (the default)"
            )
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    prompt_length = int(inputs["input_ids"].shape[1])
    name = model_id or _name_of(model)
    run_id = run_id or _default_run_id(name)
    target = run_dir_for(out, run_id)  # refuse a bad run_id or an existing run before generating
    if target.exists():
        raise FileExistsError(f"the output already exists: {target}")
    if prompt_length == 0:
        raise CaptureError("the prompt encodes to no tokens")
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if min_new_tokens is not None:
        settings["min_new_tokens"] = min(min_new_tokens, max_new_tokens)
    if do_sample:
        if seed is None:
            seed = int(torch.seed() % 2**31)
        settings.update({k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None})
    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        with capture, torch.no_grad():
            output = model.generate(**inputs, **settings, pad_token_id=pad, disable_compile=True)
    finally:
        model.train(was_training)
    generated = [int(t) for t in output[0, prompt_length:].tolist()]
    if len(capture.steps) < len(generated):
        raise CaptureError(
            f"{len(generated)} tokens were generated but the routers ran "
            f"{len(capture.steps)} times; cannot align routing with tokens"
        )
    if contract == "v0.2":
        return write_v02(
            model,
            tokenizer,
            capture,
            generated,
            prompt=prompt,
            prompt_ids=[int(t) for t in inputs["input_ids"][0].tolist()],
            out=Path(out),
            run_id=run_id,
            model_id=name,
            tokenizer_id=tokenizer_id or getattr(tokenizer, "name_or_path", "") or name,
            generation_config={**settings, "prompt_tokens": prompt_length},
            seed=seed,
            store_dtype=store_dtype,
        )
    recorder = PyTorchRunBundleRecorder(
        run_id=run_id,
        model_id=name,
        tokenizer_id=tokenizer_id or getattr(tokenizer, "name_or_path", "") or name,
        prompt_text=prompt,
        derivation_version=DERIVATION_VERSION,
        derivation_config_id=DERIVATION_CONFIG_ID,
        generation_config={**settings, "prompt_tokens": prompt_length},
        capture_config=_capture_config(model, capture, prompt_length),
        seed=seed,
    )
    for t, (token_id, step) in enumerate(zip(generated, capture.steps, strict=False)):
        recorder.record_layers(
            token_id=token_id,
            token_text=tokenizer.decode([token_id]),
            context_length=prompt_length + t,
            decode_start_ms=step.start_ms,
            decode_end_ms=step.end_ms,
            layers=_layers(capture.layer_indices, step, t),
        )
    return recorder.write_bundle(Path(out))


def _layers(layer_indices: list[int], step: StepRouting, token: int) -> list[dict[str, Any]]:
    layers = []
    for row, layer_index in enumerate(layer_indices):
        layer = build_moe_layer_from_selection(
            layer_index, step.logits[row].astype(np.float64).tolist(), step.selected[row].tolist()
        )
        _check_faithful(layer, layer_index, token)
        layers.append(layer)
    return layers


def _refuse_biased_selection(capture: RouterCapture) -> None:
    """DeepSeek-V3-style routers pick experts on sigmoid scores plus a learned bias."""
    for site in capture.sites:
        if hasattr(site.module, "e_score_correction_bias"):
            raise CaptureError(
                f"{type(site.module).__name__} (layer {site.layer_index}) selects experts on sigmoid "
                "scores plus a correction bias, group-limited; contract v0.1.0 can only state softmax "
                "top-k, so it cannot be written as v0.1.0: capture it as v0.2 (the default), which "
                "records this rule"
            )


def _check_faithful(layer: dict[str, Any], layer_index: int, token: int) -> None:
    """Refuse to write a v0.1.0 event whose experts are not the softmax top-k of the logits."""
    probs, chosen = layer["router_probs"], set(layer["topk_indices"])
    weakest = min(probs[i] for i in chosen)
    beaten = [i for i, p in enumerate(probs) if i not in chosen and p > weakest + FLOAT_TOLERANCE]
    if beaten:
        raise CaptureError(
            f"token {token}, layer {layer_index}: the model chose experts {sorted(chosen)} although "
            f"expert {beaten[0]} has a higher softmax probability. This family does not route by "
            "softmax-then-top-k (e.g. sigmoid scores with a selection bias), which contract "
            "v0.1.0 cannot record faithfully; inferoscope refuses rather than write other experts."
        )


def _capture_config(model: Any, capture: RouterCapture, prompt_length: int) -> dict[str, Any]:
    config = getattr(model, "config", None)
    router_class = type(capture.sites[0].module).__name__
    prefill = capture.steps[0] if capture.steps else None
    prefill_routing: dict[str, Any] = {"positions": prompt_length, "layers": []}
    if prefill is not None and prefill.prefill_selected is not None and prefill.prefill_logits is not None:
        for row, layer_index in enumerate(capture.layer_indices):
            logits = prefill.prefill_logits[row].astype(np.float64)
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            chosen = prefill.prefill_selected[row]
            prefill_routing["layers"].append(
                {
                    "layer_index": layer_index,
                    "topk_indices": chosen.tolist(),
                    "topk_probs": np.take_along_axis(probs, chosen, axis=-1).round(8).tolist(),
                }
            )
    return {
        "adapter": "transformers-router-hooks",
        "model_type": getattr(config, "model_type", None),
        "router_class": router_class,
        "router_modules": [site.name for site in capture.sites],
        "moe_layer_indices": capture.layer_indices,
        "probability_definition": (
            "router_probs = softmax over all experts of the router's logits (float32 from the "
            "model, computed in float64); topk_indices = the experts the router itself selected, "
            "in its order (checked to be the softmax top-k)"
        ),
        "mixing_weights": _WEIGHT_RULES.get(
            router_class,
            "softmax probabilities of the selected experts"
            + (", renormalised to sum to 1" if getattr(config, "norm_topk_prob", False) else ""),
        ),
        "norm_topk_prob": getattr(config, "norm_topk_prob", None),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "prefill_routing": prefill_routing,
    }


def _name_of(model: Any) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return str(name)


def _default_run_id(model_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name).name or "model").strip("-.") or "model"
    return f"{stem}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
