"""Shared helpers: the upstream fixtures and small bundles built with our own builders."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferoscope.extraction import (
    MoELayerCaptureInput,
    build_layer_grid_layout,
    build_manifest,
    build_token_complete_event,
)

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
VALID = FIXTURES / "valid"
INVALID = FIXTURES / "invalid"
DATA = Path(__file__).parent / "data"


def make_bundle_parts(
    tokens: int = 4,
    layers: int = 2,
    experts: int = 8,
    top_k: int = 2,
    seed: int = 0,
    run_id: str = "test-run",
    token_texts: list[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """A valid manifest, raw events and layout from seeded random logits."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((tokens, layers, experts))
    manifest = build_manifest(
        run_id=run_id,
        created_at="2026-11-26T12:00:00Z",
        model_id="test/model",
        tokenizer_id="test/tokenizer",
        prompt_text="Once upon a time",
        derivation_version="motifs/v0.1.0-alpha",
        derivation_config_id="motifs/default-alpha",
        seed=seed,
    )
    events = [
        build_token_complete_event(
            run_id=run_id,
            token_index=t,
            token_id=100 + t,
            token_text=token_texts[t] if token_texts else f" tok{t}",
            context_length=5 + t,
            decode_start_ms=10.0 * t,
            decode_end_ms=10.0 * t + 7.5,
            layer_inputs=[
                MoELayerCaptureInput(layer, logits[t, layer].tolist(), top_k) for layer in range(layers)
            ],
        )
        for t in range(tokens)
    ]
    layout = build_layer_grid_layout(
        run_id=run_id,
        layout_id="default-grid",
        layer_expert_counts=[(layer, experts) for layer in range(layers)],
    )
    return manifest, events, layout


def write_raw_bundle(
    folder: Path, manifest: Any, events: list[Any], layout: Any, raw_lines: list[str] | None = None
) -> Path:
    """Write a bundle *without* validation (for broken bundles) in the contract's byte format."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (folder / "layout.json").write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    lines = raw_lines if raw_lines is not None else [json.dumps(e, sort_keys=True) for e in events]
    (folder / "raw_trace.ndjson").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture
def bundle_factory(tmp_path: Path) -> Callable[..., Path]:
    """Writes a broken-or-not bundle into tmp_path and returns its directory."""
    counter = iter(range(10_000))

    def make(mutate: Callable[[Any, list[Any], Any], None] | None = None, **kwargs: Any) -> Path:
        manifest, events, layout = make_bundle_parts(**kwargs)
        if mutate is not None:
            mutate(manifest, events, layout)
        return write_raw_bundle(tmp_path / f"bundle{next(counter)}", manifest, events, layout)

    return make


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A writable copy of an upstream fixture bundle (``valid/a_readme_demo`` etc.)."""

    def copy(name: str) -> Path:
        target = tmp_path / name.replace("/", "_")
        shutil.copytree(FIXTURES / name, target)
        for path in target.iterdir():
            path.chmod(0o644)
        return target

    return copy
