"""Collect generated tokens into a run bundle: the recorder API of the original library."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..bundle.writer import write_run_bundle
from .builders import (
    MoELayerCaptureInput,
    build_layer_grid_layout,
    build_manifest,
    build_token_complete_event,
    token_event_with_layers,
)


class PyTorchRunBundleRecorder:
    """Accumulates ``token_complete`` events for one run and writes them as one bundle.

    Tensor-likes (anything with ``detach``/``cpu``/``tolist``) are accepted for router
    logits; torch itself is never imported here.
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
        self.manifest = build_manifest(
            run_id=run_id,
            created_at=created_at,
            model_id=model_id,
            tokenizer_id=tokenizer_id,
            prompt_text=prompt_text,
            derivation_version=derivation_version,
            derivation_config_id=derivation_config_id,
            generation_config=generation_config,
            capture_config=capture_config,
            seed=seed,
        )
        self.raw_events: list[dict[str, Any]] = []
        self._layer_experts: dict[int, int] = {}

    @property
    def next_token_index(self) -> int:
        return len(self.raw_events)

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
        """Build, remember and return one event."""
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
        self.note_layers(event["layers"])
        self.raw_events.append(event)
        return event

    def note_layers(self, layers: Iterable[Mapping[str, Any]]) -> None:
        """Remember each layer's expert count (first seen) for the layout."""
        for layer in layers:
            self._layer_experts.setdefault(layer["layer_index"], layer["num_total_experts"])

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
        """Like record_token_complete, with the next token_index chosen automatically."""
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
        self.note_layers(layers)
        self.raw_events.append(event)
        return event

    def build_layout(self) -> dict[str, Any]:
        """The default grid layout over every layer seen so far (first-seen expert counts)."""
        return build_layer_grid_layout(
            run_id=self.run_id,
            layout_id=self.layout_id,
            layer_expert_counts=sorted(self._layer_experts.items()),
        )

    def write_bundle(self, root: Path | str) -> Path:
        """Validate and atomically write the bundle under ``root``; returns its directory."""
        return write_run_bundle(Path(root), self.manifest, self.raw_events, self.build_layout())


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
    return recorder.record_generated_token(
        token_id=token_id,
        token_text=token_text,
        context_length=context_length,
        decode_start_ms=decode_start_ms,
        decode_end_ms=decode_end_ms,
        layer_inputs=[
            MoELayerCaptureInput(layer_index, router_logits_by_layer[layer_index], num_active_experts)
            for layer_index in sorted(router_logits_by_layer)
        ],
    )
