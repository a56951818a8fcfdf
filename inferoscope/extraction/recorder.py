"""Collect generated tokens into a run bundle: the recorder API of the original library."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..bundle.writer import write_run_bundle
from .builders import (
    MoELayerCaptureInput,
    as_integer,
    build_layer_grid_layout,
    build_manifest,
    build_token_complete_event,
    token_event_with_layers,
)


class PyTorchRunBundleRecorder:
    """Accumulates ``token_complete`` events for one run and writes them as one bundle.

    Tensor-likes (anything with ``detach``/``cpu``/``tolist``) are accepted for router
    logits; torch itself is never imported here. What goes in is copied and what comes out
    is a copy, so a caller can never change a recorded token behind the recorder's back.
    A token is checked before it is kept: a refused token leaves the recorder as it was.
    """

    def __init__(
        self,
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
        layout_id: str = "default-grid",
    ) -> None:
        self.run_id = run_id
        self.layout_id = layout_id
        self._manifest = build_manifest(
            run_id=run_id,
            created_at=created_at,
            model_id=model_id,
            tokenizer_id=tokenizer_id,
            prompt_text=prompt_text,
            derivation_version=derivation_version,
            derivation_config_id=derivation_config_id,
            generation_config=copy.deepcopy(dict(generation_config or {})),
            capture_config=copy.deepcopy(dict(capture_config or {})),
            seed=seed,
        )
        self._events: list[dict[str, Any]] = []
        self._layer_experts: dict[int, int] = {}

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest that will be written."""
        return copy.deepcopy(self._manifest)

    @property
    def raw_events(self) -> list[dict[str, Any]]:
        """A copy of the events recorded so far."""
        return copy.deepcopy(self._events)

    @property
    def next_token_index(self) -> int:
        return len(self._events)

    def record_token_complete(
        self,
        *,
        token_index: int,
        token_id: int,
        token_text: str,
        context_length: int,
        decode_start_ms: float,
        decode_end_ms: float,
        layer_inputs: Iterable[MoELayerCaptureInput],
    ) -> dict[str, Any]:
        """Build, check, remember and return (a copy of) one event."""
        event = build_token_complete_event(
            run_id=self.run_id,
            token_index=token_index,
            token_id=token_id,
            token_text=token_text,
            context_length=context_length,
            decode_start_ms=decode_start_ms,
            decode_end_ms=decode_end_ms,
            layer_inputs=layer_inputs,
        )
        return self._keep(event)

    def record_generated_token(
        self,
        *,
        token_id: int,
        token_text: str,
        context_length: int,
        decode_start_ms: float,
        decode_end_ms: float,
        layer_inputs: Iterable[MoELayerCaptureInput],
    ) -> dict[str, Any]:
        """Like record_token_complete, with the next token_index chosen automatically.

        The tokens recorded so far must be numbered 0, 1, 2, ... (as this method numbers them);
        after a token recorded by hand out of that order there is no "next" index to choose.
        """
        self._require_contiguous()
        return self.record_token_complete(
            token_index=self.next_token_index,
            token_id=token_id,
            token_text=token_text,
            context_length=context_length,
            decode_start_ms=decode_start_ms,
            decode_end_ms=decode_end_ms,
            layer_inputs=layer_inputs,
        )

    def record_layers(
        self,
        *,
        token_id: int,
        token_text: str,
        context_length: int,
        decode_start_ms: float,
        decode_end_ms: float,
        layers: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Record the next token from layer entries built elsewhere (capture's own selection)."""
        self._require_contiguous()
        event = token_event_with_layers(
            run_id=self.run_id,
            token_index=self.next_token_index,
            token_id=token_id,
            token_text=token_text,
            context_length=context_length,
            decode_start_ms=decode_start_ms,
            decode_end_ms=decode_end_ms,
            layers=layers,
        )
        return self._keep(event)

    def _require_contiguous(self) -> None:
        if any(event["token_index"] != position for position, event in enumerate(self._events)):
            raise ValueError(
                "record_generated_token requires existing token_index values to be contiguous starting at 0."
            )

    def _keep(self, event: dict[str, Any]) -> dict[str, Any]:
        """Refuse a token whose layer changes its expert count; otherwise keep it."""
        counts = dict(self._layer_experts)
        for layer in event["layers"]:
            index, experts = layer["layer_index"], layer["num_total_experts"]
            before = counts.setdefault(index, experts)
            if before != experts:
                raise ValueError(
                    f"layer {index} num_total_experts must stay constant across the run: "
                    f"{before} before, {experts} in token_index {event['token_index']}"
                )
        self._layer_experts = counts
        self._events.append(event)
        return copy.deepcopy(event)

    def build_layout(self) -> dict[str, Any]:
        """The default grid layout over every layer recorded so far."""
        if not self._layer_experts:
            raise ValueError("cannot build a layout before recording at least one token_complete event")
        return build_layer_grid_layout(
            run_id=self.run_id,
            layout_id=self.layout_id,
            layer_expert_counts=sorted(self._layer_experts.items()),
        )

    def write_bundle(self, root_dir: Path | str | None = None, *, root: Path | str | None = None) -> Path:
        """Validate and atomically write the bundle under ``root_dir``; returns its directory.

        ``root`` is accepted as another name for ``root_dir``.
        """
        folder = _one_root(root_dir, root)
        if not self._events:
            raise ValueError("cannot write a run bundle before recording at least one token_complete event")
        return write_run_bundle(folder, self._manifest, self._events, self.build_layout())


def _one_root(root_dir: Path | str | None, root: Path | str | None) -> Path | str:
    if (root_dir is None) == (root is None):
        raise TypeError("write_bundle needs exactly one of root_dir or root")
    return root_dir if root_dir is not None else root  # type: ignore[return-value]


def build_olmoe_layer_inputs(
    *, router_logits_by_layer: Mapping[int, Any], num_active_experts: int
) -> list[MoELayerCaptureInput]:
    """Layer inputs from OLMoE-style ``{layer_index: router_logits}``, sorted by layer."""
    if not isinstance(router_logits_by_layer, Mapping):
        raise TypeError(
            "router_logits_by_layer must be a mapping from integer layer indices to router logits, "
            f"got {type(router_logits_by_layer).__name__}"
        )
    k = as_integer(num_active_experts)
    if k is None:
        raise TypeError(f"num_active_experts must be an integer, got {type(num_active_experts).__name__}")
    if k < 1:
        raise ValueError(f"num_active_experts must be an integer >= 1, got {k}")
    if not router_logits_by_layer:
        raise ValueError("router_logits_by_layer must not be empty")
    layers: dict[int, Any] = {}
    for key, logits in router_logits_by_layer.items():
        layer_index = as_integer(key)
        if layer_index is None:
            raise TypeError(f"router_logits_by_layer keys must be integer layer indices, got {key!r}")
        if layer_index < 0:
            raise ValueError(f"router_logits_by_layer layer_index {layer_index} must be non-negative")
        layers[layer_index] = logits
    return [MoELayerCaptureInput(index, layers[index], k) for index in sorted(layers)]


def record_olmoe_generated_token(
    recorder: PyTorchRunBundleRecorder,
    *,
    token_id: int,
    token_text: str,
    context_length: int,
    decode_start_ms: float,
    decode_end_ms: float,
    router_logits_by_layer: Mapping[int, Any],
    num_active_experts: int,
) -> dict[str, Any]:
    """Record one generated token from OLMoE-style per-layer router logits (layers sorted)."""
    record = getattr(recorder, "record_generated_token", None)
    if not callable(record):
        raise TypeError(
            f"recorder must implement record_generated_token (got {type(recorder).__name__} without it)"
        )
    layer_inputs = build_olmoe_layer_inputs(
        router_logits_by_layer=router_logits_by_layer, num_active_experts=num_active_experts
    )
    result: dict[str, Any] = record(
        token_id=token_id,
        token_text=token_text,
        context_length=context_length,
        decode_start_ms=decode_start_ms,
        decode_end_ms=decode_end_ms,
        layer_inputs=layer_inputs,
    )
    return result
