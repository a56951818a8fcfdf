"""Serving-engine routed experts: import (SGLang and vLLM formats, as the engines' sources write
them), replay through transformers, and compare; planted disagreements are each found, and a
shifted layer axis is reported as such."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inferoscope import RunReader
from inferoscope.capture.engine import import_engine, replay
from inferoscope.capture.route import _route_batch
from inferoscope.capture.routers import find_routers
from inferoscope.compare import compare_runs
from inferoscope.engine_import import EngineImportError

from .tiny_models import save_tiny

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def engine_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """qwen2_moe tiny: 4 decoder layers, MoE at 1 and 3 (dense 0 and 2), as an engine returns it:
    one row per fed-forward position, every decoder layer, dense layers 0."""
    folder = save_tiny("qwen2_moe", tmp_path_factory.mktemp("qwen2_moe"))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        full = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, pad_token_id=0)[
            0
        ].tolist()
    ids = torch.tensor([full[:-1]])  # the last generated token is never fed forward: no row
    _logits, _weights, selected = _route_batch(model, find_routers(model), ids, torch.ones_like(ids))
    rows = np.zeros((ids.shape[1], model.config.num_hidden_layers, selected.shape[-1]), dtype=np.int32)
    for slot, site in enumerate(find_routers(model)):
        rows[:, site.layer_index] = selected[0, :, slot]
    return {
        "folder": folder,
        "model": model,
        "tokenizer": tokenizer,
        "prompt": prompt,
        "full": full,
        "rows": rows,
    }


def sglang_file(path: Path, case: dict[str, Any], rows: np.ndarray) -> Path:
    response = {
        "text": "...",
        "output_ids": case["full"][len(case["prompt"]) :],
        "meta_info": {"routed_experts": base64.b64encode(rows.astype("<i4").tobytes()).decode("ascii")},
    }
    path.write_text(json.dumps({"input_ids": case["prompt"], "response": response}))
    return path


def test_an_engine_run_that_agrees_replays_to_full_agreement(
    engine_case: dict[str, Any], tmp_path: Path
) -> None:
    source = sglang_file(tmp_path / "sglang.json", engine_case, engine_case["rows"])
    run, checked = import_engine("sglang", source, engine_case["folder"], out=tmp_path, run_id="engine")
    assert any("dense layers [0, 2] are dropped" in f for f in checked.findings)
    reader = RunReader(run)
    assert reader.validate().ok and reader.manifest is not None and reader.manifest["run_kind"] == "engine"
    assert len(reader) == len(engine_case["full"]) - 1
    assert [layer.layer_index for layer in reader.token_event(0).layers] == [1, 3]
    again = replay(run, engine_case["model"], engine_case["tokenizer"], out=tmp_path, run_id="replay")
    result = compare_runs(run, again)
    assert np.nanmin(result.same_set) == 1.0 and np.nanmin(result.same_order) == 1.0
    assert np.nanmin(result.top1_agree) == 1.0


def test_planted_disagreements_are_each_found(engine_case: dict[str, Any], tmp_path: Path) -> None:
    rows = engine_case["rows"].copy()
    rows[2, 1] = rows[2, 1][::-1]  # the same experts in another order
    rows[4, 3, 0] = next(e for e in range(8) if e not in rows[4, 3])  # another set
    source = sglang_file(tmp_path / "planted.json", engine_case, rows)
    run, _ = import_engine("sglang", source, engine_case["folder"], out=tmp_path, run_id="engine")
    again = replay(run, engine_case["model"], engine_case["tokenizer"], out=tmp_path, run_id="replay")
    result = compare_runs(run, again)
    column = {layer: i for i, layer in enumerate(result.layers)}
    assert result.same_set[2, column[1]] == 1.0 and result.same_order[2, column[1]] == 0.0
    assert result.same_set[4, column[3]] == 0.0
    assert np.nansum(1 - result.same_set) == 1 and np.nansum(1 - result.same_order) == 1
    # the margin at the planted flip, in the replay's own selection keys (the engine has no scores)
    layer = RunReader(again).token_event(4).layer(3)
    assert layer is not None
    keys = layer.selection_keys()
    assert keys is not None
    expected = float(keys[list(layer.selected)].min()) - float(keys[rows[4, 3, 0]])
    assert result.flip_margin[4, column[3]] == pytest.approx(expected) and expected >= 0
    assert (~np.isnan(result.flip_margin)).sum() == 1


def test_a_shifted_layer_axis_is_reported_as_such(engine_case: dict[str, Any], tmp_path: Path) -> None:
    shifted = np.roll(engine_case["rows"], 1, axis=1)  # MoE routing one layer off: dense zeros at 1 and 3
    source = sglang_file(tmp_path / "shifted.json", engine_case, shifted)
    with pytest.raises(EngineImportError, match="layer index offset"):
        import_engine("sglang", source, engine_case["folder"], out=tmp_path, run_id="engine")
    assert not (tmp_path / "engine").exists()


def test_vllm_padding_and_missing_rows_are_reported(engine_case: dict[str, Any], tmp_path: Path) -> None:
    rows = engine_case["rows"].copy()
    rows[3, 1, 1] = 255  # a padding slot
    payload = {
        "prompt_token_ids": engine_case["prompt"],
        "token_ids": engine_case["full"][len(engine_case["prompt"]) :],
        "routed_experts": rows[:-1].tolist(),  # one row short
    }
    (tmp_path / "vllm.json").write_text(json.dumps(payload))
    with pytest.raises(EngineImportError) as caught:
        import_engine("vllm", tmp_path / "vllm.json", engine_case["folder"], out=tmp_path, run_id="v")
    assert "missing rows" in str(caught.value) and "padding values [255]" in str(caught.value)


def test_the_cli_refuses_the_other_format_and_foreign_token_ids(
    engine_case: dict[str, Any], tmp_path: Path
) -> None:
    source = sglang_file(tmp_path / "sglang.json", engine_case, engine_case["rows"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "inferoscope", "import-engine", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    wrong = cli(
        str(source),
        "--format",
        "vllm",
        "--tokenizer",
        str(engine_case["folder"]),
        "--out",
        str(tmp_path / "o"),
    )
    assert (
        wrong.returncode == 2
        and "use --format sglang" in wrong.stderr
        and len(wrong.stderr.splitlines()) == 1
    )
    foreign = json.loads(source.read_text())
    foreign["input_ids"] = [10**6, *foreign["input_ids"][1:]]
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    bad = cli(
        str(tmp_path / "foreign.json"),
        "--format",
        "sglang",
        "--tokenizer",
        str(engine_case["folder"]),
        "--out",
        str(tmp_path / "o"),
    )
    assert bad.returncode == 2 and "outside the tokenizer" in bad.stderr
    assert not (tmp_path / "o").exists()
