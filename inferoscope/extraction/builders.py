"""Builders of manifest, raw event, layer trace and grid layout (contract §3, §7).

The arithmetic is plain Python in a fixed order (max-subtracted exp, left-to-right sums)
so that the numbers, and therefore the bundle bytes, equal the original library's.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..run_ids import run_id_path
from ..validation.rfc3339 import is_rfc3339_date_time
from ..versions import (
    ARTIFACT_VERSION_KEYS,
    LAYOUT_SCHEMA_VERSION,
    MANIFEST_SCHEMA_VERSION,
    RAW_EVENT_SCHEMA_VERSION,
)
from .tensors import to_float_list


@dataclass(frozen=True, slots=True)
class MoELayerCaptureInput:
    """One MoE layer's router logits for one token, and how many experts it activates."""

    layer_index: int
    router_logits: Any
    num_active_experts: int


def utc_now_rfc3339() -> str:
    """Now, as an RFC 3339 UTC timestamp with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_manifest(
    *,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    prompt_text: str,
    derivation_version: str,
    derivation_config_id: str,
    created_at: str | None = None,
    generation_config: Mapping[str, Any] | None = None,
    capture_config: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A ``manifest/v0.1.0`` object; ``created_at`` defaults to now (UTC).

    Refuses (ValueError) what the original library refuses: an empty or non-canonical run_id,
    a created_at that is not RFC 3339, empty model, tokenizer or derivation ids.
    """
    _check_run_id(run_id)
    if created_at is not None and not (isinstance(created_at, str) and is_rfc3339_date_time(created_at)):
        raise ValueError(f"created_at must be a valid RFC 3339 date-time string, got {created_at!r}")
    for name, value in (
        ("model_id", model_id),
        ("tokenizer_id", tokenizer_id),
        ("derivation_version", derivation_version),
        ("derivation_config_id", derivation_config_id),
    ):
        if not value:
            raise ValueError(f"{name} must not be empty")
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": created_at if created_at is not None else utc_now_rfc3339(),
        "model_id": model_id,
        "tokenizer_id": tokenizer_id,
        "prompt": {"text": prompt_text},
        "seed": seed,
        "generation_config": dict(generation_config or {}),
        "capture_config": dict(capture_config or {}),
        "artifact_versions": dict(ARTIFACT_VERSION_KEYS),
        "derivation_version": derivation_version,
        "derivation_config_id": derivation_config_id,
    }


def _check_run_id(run_id: object) -> None:
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must not be empty")
    run_id_path(run_id)


def as_integer(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (numpy integers too, bools not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _check_index(name: str, value: object) -> int:
    """A non-negative integer index (numpy integers included), else TypeError / ValueError."""
    number = as_integer(value)
    if number is None:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if number < 0:
        raise ValueError(f"{name} must be non-negative (>= 0), got {number}")
    return number


def _milliseconds(name: str, value: object) -> int | float:
    """A finite time in ms; integers stay integers (the bytes then equal the original's)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite")
    return number


def softmax(logits: Sequence[float]) -> list[float]:
    """Max-subtracted softmax without temperature; refuses non-finite logits."""
    if not logits:
        raise ValueError("router logits must not be empty")
    if not all(math.isfinite(value) for value in logits):
        raise ValueError("router logits must be finite (NaN or Infinity found)")
    peak = max(logits)
    exps = [math.exp(value - peak) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


def build_moe_layer_trace(layer_index: int, router_logits: Any, *, num_active_experts: int) -> dict[str, Any]:
    """The raw layer entry for one token: probabilities, top-k and sharpness numbers.

    ``router_logits`` is one flat row (list, numpy array or tensor-like); top-k is the k most
    probable experts, ties broken by the lower index.
    """
    layer_index = _check_index("layer_index", layer_index)
    probs = softmax(to_float_list(router_logits))
    n = len(probs)
    k = as_integer(num_active_experts)
    if k is None:
        raise TypeError(f"num_active_experts must be an integer, got {type(num_active_experts).__name__}")
    if k < 1:
        raise ValueError(f"num_active_experts must be an integer >= 1, got {k}")
    if k > n:
        raise ValueError(f"num_active_experts ({k}) must not exceed the number of experts ({n})")
    ranking = sorted(range(n), key=lambda i: (-probs[i], i))
    return layer_from_probs(layer_index, probs, ranking[:k])


def build_moe_layer_from_selection(
    layer_index: int, router_logits: Any, topk_indices: Sequence[int]
) -> dict[str, Any]:
    """A layer entry whose top-k is the model's own selection (capture), not recomputed."""
    probs = softmax(to_float_list(router_logits))
    indices = [int(i) for i in topk_indices]
    if not indices or any(not 0 <= i < len(probs) for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"selected experts {indices} are not distinct indices in [0, {len(probs)})")
    return layer_from_probs(layer_index, probs, indices)


def layer_from_probs(layer_index: int, probs: list[float], topk_indices: list[int]) -> dict[str, Any]:
    """The layer entry for probabilities and chosen experts (contract §3 arithmetic, in order)."""
    n = len(probs)
    topk_probs = [probs[i] for i in topk_indices]
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    return {
        "layer_index": layer_index,
        "layer_kind": "moe",
        "num_total_experts": n,
        "num_active_experts": len(topk_indices),
        "router_probs": probs,
        "topk_indices": topk_indices,
        "topk_probs": topk_probs,
        "entropy": entropy,
        # a uniform router can round to 1 + 1 ulp; the schema caps the value at 1
        "normalized_entropy": min(entropy / math.log(n), 1.0) if n > 1 else 0.0,
        "top1_prob": topk_probs[0],
        "top1_top2_margin": topk_probs[0] - topk_probs[1] if len(topk_probs) >= 2 else topk_probs[0],
    }


def build_token_complete_event(
    *,
    run_id: str,
    token_index: int,
    token_id: int,
    token_text: str,
    context_length: int,
    decode_start_ms: float,
    decode_end_ms: float,
    layer_inputs: Iterable[MoELayerCaptureInput],
) -> dict[str, Any]:
    """A ``raw/v0.1.0`` ``token_complete`` event; layers come out sorted by ``layer_index``."""
    inputs = list(layer_inputs)
    if not inputs:
        raise ValueError("layer_inputs must not be empty")
    indices = [_check_index("layer_index", layer_input.layer_index) for layer_input in inputs]
    if len(set(indices)) != len(indices):
        raise ValueError(f"duplicate layer_index values are not allowed: {sorted(indices)}")
    layers = [
        build_moe_layer_trace(
            layer_input.layer_index,
            layer_input.router_logits,
            num_active_experts=layer_input.num_active_experts,
        )
        for layer_input in inputs
    ]
    return token_event_with_layers(
        run_id=run_id,
        token_index=token_index,
        token_id=token_id,
        token_text=token_text,
        context_length=context_length,
        decode_start_ms=decode_start_ms,
        decode_end_ms=decode_end_ms,
        layers=sorted(layers, key=lambda layer: layer["layer_index"]),
    )


def token_event_with_layers(
    *,
    run_id: str,
    token_index: int,
    token_id: int,
    token_text: str,
    context_length: int,
    decode_start_ms: float,
    decode_end_ms: float,
    layers: list[dict[str, Any]],
) -> dict[str, Any]:
    """A ``token_complete`` event around already built layer entries (inputs checked here)."""
    _check_run_id(run_id)
    token_index = _check_index("token_index", token_index)
    context_length = _check_index("context_length", context_length)
    start = _milliseconds("decode_start_ms", decode_start_ms)
    end = _milliseconds("decode_end_ms", decode_end_ms)
    if end < start:
        raise ValueError(f"decode_end_ms ({end}) must be >= decode_start_ms ({start})")
    return {
        "event_type": "token_complete",
        "schema_version": RAW_EVENT_SCHEMA_VERSION,
        "run_id": run_id,
        "token_index": token_index,
        "token_id": token_id,
        "token_text": token_text,
        "context_length": context_length,
        "timing_ms": {"decode_start": start, "decode_end": end, "decode_duration": end - start},
        "layers": layers,
    }


def build_layer_grid_layout(
    *,
    run_id: str,
    layout_id: str,
    layer_expert_counts: Iterable[tuple[int, int]],
    layout_kind: str = "layer-grid",
) -> dict[str, Any]:
    """A square grid per layer: ceil(sqrt(n)) columns, x = i mod cols, y = i div cols, z = layer."""
    _check_run_id(run_id)
    if not layout_id:
        raise ValueError("layout_id must not be empty")
    counts = list(layer_expert_counts)
    if not counts:
        raise ValueError("layer_expert_counts must not be empty")
    seen: set[int] = set()
    layers: list[dict[str, Any]] = []
    for layer_index, count in counts:
        layer_index = _check_index("layer_index", layer_index)
        if layer_index in seen:
            raise ValueError(f"duplicate layer_index values are not allowed: {layer_index}")
        seen.add(layer_index)
        n = as_integer(count)
        if n is None or n < 1:
            raise ValueError(f"expert_count of layer {layer_index} must be at least 1, got {count!r}")
        columns = math.isqrt(n - 1) + 1
        layers.append(
            {
                "layer_index": layer_index,
                "positions": [
                    {
                        "expert_index": i,
                        "x": float(i % columns),
                        "y": float(i // columns),
                        "z": float(layer_index),
                    }
                    for i in range(n)
                ],
            }
        )
    return {
        "schema_version": LAYOUT_SCHEMA_VERSION,
        "run_id": run_id,
        "layout_id": layout_id,
        "layout_kind": layout_kind,
        "layers": layers,
    }
