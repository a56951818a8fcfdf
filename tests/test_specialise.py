"""``specialise``: a planted preference is found and beats the document-level null; a source with
no preference stays within it; documents, not tokens, are shuffled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferoscope.bundle.writer_v02 import RunWriter, default_array_paths
from inferoscope.extraction import build_layer_grid_layout
from inferoscope.specialise import SpecialiseError, specialise
from inferoscope.synthetic import v02_manifest

LAYERS, EXPERTS, TOP_K = 2, 8, 2


def write_doc(
    root: Path, index: int, source: str, tokens: int, favour: int | None, rng: np.random.Generator
) -> Path:
    run_id = f"doc-{index:06d}"
    group = {
        "name": "moe",
        "layers": list(range(LAYERS)),
        "num_experts": EXPERTS,
        "top_k": TOP_K,
        "score_function": "softmax",
        "selection": {"rule": "topk", "bias": False},
        "mixing": {"rule": "renormalize", "scale": 1.0},
        "shared_experts": 0,
        "arrays": default_array_paths("moe"),
    }
    manifest = dict(v02_manifest(run_id, [group]), run_kind="teacher_forced")
    logits = rng.standard_normal((tokens, LAYERS, EXPERTS)).astype(np.float32)
    if favour is not None:
        logits[:, 0, favour] += 2.0  # layer 0 prefers this expert for this source
    z = np.exp(logits - logits.max(-1, keepdims=True))
    scores = (z / z.sum(-1, keepdims=True)).astype(np.float32)
    selected = np.argsort(-scores, -1, kind="stable")[..., :TOP_K]
    chosen = np.take_along_axis(scores, selected, -1).astype(np.float64)
    weights = (chosen / chosen.sum(-1, keepdims=True)).astype(np.float32)
    writer = RunWriter(root, manifest)
    metas = [
        {
            "event_type": "token_complete",
            "schema_version": "raw/v0.2.0",
            "run_id": run_id,
            "token_index": t,
            "token_id": t,
            "token_text": "x",
            "context_length": t + 1,
            "document_index": index,
            "source": source,
        }
        for t in range(tokens)
    ]
    writer.add_tokens(metas, {"moe": {"selected": selected, "weights": weights, "scores": scores}})
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="g", layer_expert_counts=[(i, EXPERTS) for i in range(LAYERS)]
    )
    return writer.close(layout)


@pytest.fixture(scope="module")
def run_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("set")
    rng = np.random.default_rng(0)
    for i in range(24):
        source = ("code", "prose", "license")[i % 3]
        write_doc(root, i, source, int(rng.integers(20, 60)), 5 if source == "code" else None, rng)
    return root


def test_a_planted_preference_beats_the_null_and_nothing_else_does(run_set: Path) -> None:
    result = specialise([run_set], permutations=1000, seed=1)
    assert result.sources == ["code", "license", "prose"] and result.documents == 24
    layer0, layer1 = result.layers
    assert layer0.mi_p_value <= 0.01 and layer0.mutual_information > layer0.mi_null_p99
    assert layer1.mi_p_value > 0.01  # no preference planted: it does not beat the null (alpha 0.01)
    assert layer0.beats_null and not layer1.beats_null  # after the study's multiple-testing control
    assert code_q_is_controlled(layer0, result.sources)
    code = layer0.leaning(result.sources)["code"]
    assert code[0]["expert"] == 5 and code[0]["beats_null"] and code[0]["lift"] > code[0]["null_p99"]
    assert not any(x["beats_null"] for x in layer1.leaning(result.sources)["prose"])


def code_q_is_controlled(layer: Any, sources: list[str]) -> bool:
    """Every lean is marked exactly when its adjusted p-value is <= 0.01, and adjusting never
    makes a test stronger than its own p-value."""
    leans = [x for experts in layer.leaning(sources, top=8).values() for x in experts]
    return all(
        x["p_adjusted"] >= x["p_value"] - 1e-12 and (x["p_adjusted"] <= 0.01) == x["beats_null"]
        for x in leans
    )


def test_max_t_marks_a_strong_effect_among_many_null_tests_and_only_it() -> None:
    """1,000 tests, one real effect: max-T marks it and no other (the family-wise error is
    controlled), where an unadjusted p <= 0.01 would mark about ten by chance."""
    from inferoscope.specialise import max_t_adjusted

    rng = np.random.default_rng(3)
    null = rng.standard_normal((2000, 1000))
    observed = rng.standard_normal(1000)
    observed[17] = 8.0
    adjusted = max_t_adjusted(observed, null)
    raw = (1 + (null >= observed).sum(axis=0)) / 2001
    assert adjusted[17] <= 0.01 and (adjusted <= 0.01).sum() == 1
    assert (raw <= 0.01).sum() > 3


def test_the_cli_prints_and_gives_json(run_set: Path) -> None:
    command = [sys.executable, "-m", "inferoscope", "specialise", str(run_set), "--by", "source", "--json"]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["null"] == "sources shuffled across documents" and data["layers"][0]["mi_p_value"] <= 0.01
    text = subprocess.run(command[:-1], capture_output=True, text=True, check=False)
    assert text.returncode == 0 and "layer 0: MI" in text.stdout and "beats the null" in text.stdout


def test_one_source_or_no_labels_is_a_clear_refusal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        write_doc(tmp_path, i, "code", 10, None, rng)
    with pytest.raises(SpecialiseError, match="only one source"):
        specialise([tmp_path], permutations=10)
    missing = subprocess.run(
        [sys.executable, "-m", "inferoscope", "specialise", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
