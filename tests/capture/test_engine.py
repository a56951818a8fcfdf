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


def test_a_chunked_replay_equals_one_pass(engine_case: dict[str, Any], tmp_path: Path) -> None:
    """A long trace is replayed a chunk at a time through the KV cache (what it holds is one
    chunk): same experts, same order, scores within float tolerance of the one-pass replay."""
    source = sglang_file(tmp_path / "sglang.json", engine_case, engine_case["rows"])
    run, _ = import_engine("sglang", source, engine_case["folder"], out=tmp_path, run_id="engine")
    model, tokenizer = engine_case["model"], engine_case["tokenizer"]
    whole = replay(run, model, tokenizer, out=tmp_path, run_id="whole", chunk=0)
    chunked = replay(run, model, tokenizer, out=tmp_path, run_id="chunked", chunk=4)
    a, b = RunReader(whole), RunReader(chunked)
    assert b.validate().ok and len(a) == len(b) == len(engine_case["full"]) - 1
    for t in range(len(a)):
        ta, tb = a.token_event(t), b.token_event(t)
        assert ta.token_id == tb.token_id and ta.context_length == tb.context_length
        for la, lb in zip(ta.layers, tb.layers, strict=True):
            assert list(la.selected) == list(lb.selected)
            assert la.scores is not None and lb.scores is not None
            np.testing.assert_allclose(la.scores, lb.scores, atol=1e-5)


def _npy_b64(array: np.ndarray) -> str:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _generations(case: dict[str, Any], rows: np.ndarray) -> dict[str, tuple[str, str, Any]]:
    """One file per engine generation, each exactly as that generation's source writes it:
    (engine, file name, content: JSON-able object or arrays for an NPZ)."""
    prompt, output = case["prompt"], case["full"][len(case["prompt"]) :]
    p = len(prompt)
    return {
        # vLLM offline, first format: CompletionOutput.routed_experts, int32 ndarray, every decoder layer
        "vllm-offline-int32": (
            "vllm",
            "run.npz",
            {"prompt_token_ids": np.array(prompt), "token_ids": np.array(output), "routed_experts": rows},
        ),
        # vLLM 0.21 HTTP: prompt rows apart from the choice's rows, nested lists
        "vllm-0.21-split": (
            "vllm",
            "chat.json",
            {
                "prompt_token_ids": prompt,
                "prompt_routed_experts": rows[:p].tolist(),  # one row per prompt position
                "choices": [{"index": 0, "token_ids": output, "routed_experts": rows[p:].tolist()}],
            },
        ),
        # vLLM HTTP (scheduler slot buffer): base64 .npy, uint8 for <= 256 experts
        "vllm-http-npy-uint8": (
            "vllm",
            "chat.json",
            {
                "prompt_token_ids": prompt,
                "choices": [
                    {"index": 0, "token_ids": output, "routed_experts": _npy_b64(rows.astype(np.uint8))}
                ],
            },
        ),
        # SGLang with a narrowed dtype declared beside the ids
        "sglang-uint16": (
            "sglang",
            "sglang.json",
            {
                "input_ids": prompt,
                "response": {
                    "output_ids": output,
                    "meta_info": {
                        "routed_experts": base64.b64encode(rows.astype("<u2").tobytes()).decode("ascii"),
                        "routed_experts_dtype": "uint16",
                    },
                },
            },
        ),
    }


def _write(path: Path, content: Any) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **content)
    else:
        path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    "generation", ["vllm-offline-int32", "vllm-0.21-split", "vllm-http-npy-uint8", "sglang-uint16"]
)
def test_every_engine_generation_imports_to_the_same_selection(
    engine_case: dict[str, Any], tmp_path: Path, generation: str
) -> None:
    engine, name, content = _generations(engine_case, engine_case["rows"])[generation]
    source = _write(tmp_path / name, content)
    run, checked = import_engine(engine, source, engine_case["folder"], out=tmp_path, run_id="engine")
    assert np.array_equal(checked.selected, engine_case["rows"][:, [1, 3]])  # the MoE layers, as sent
    reader = RunReader(run)
    assert reader.validate().ok and len(reader) == len(engine_case["full"]) - 1
    assert [list(la.selected) for la in reader.token_event(2).layers] == engine_case["rows"][
        2, [1, 3]
    ].tolist()


def test_known_engine_bugs_are_named(engine_case: dict[str, Any], tmp_path: Path) -> None:
    rows = engine_case["rows"]
    # a MoE kernel that bypassed the capture: vLLM returns its zero-filled buffer
    zeros = np.zeros_like(rows)
    engine, name, content = _generations(engine_case, zeros)["vllm-http-npy-uint8"]
    with pytest.raises(EngineImportError, match="all zeros in every MoE layer: slots the engine never wrote"):
        import_engine(
            engine, _write(tmp_path / name, content), engine_case["folder"], out=tmp_path, run_id="z"
        )
    # a consumer's missing-route sentinel
    sentinel = rows.copy()
    sentinel[3, 1, 1] = -1
    engine, name, content = _generations(engine_case, sentinel)["vllm-offline-int32"]
    with pytest.raises(EngineImportError, match=r"padding values \[-1\] \(-1: a missing-route sentinel\)"):
        import_engine(
            engine, _write(tmp_path / name, content), engine_case["folder"], out=tmp_path, run_id="s"
        )
    # a streamed response carries no routed experts
    engine, name, content = _generations(engine_case, rows)["vllm-0.21-split"]
    content["choices"][0]["routed_experts"] = None
    with pytest.raises(EngineImportError, match="only on non-streaming responses"):
        import_engine(
            engine, _write(tmp_path / name, content), engine_case["folder"], out=tmp_path, run_id="n"
        )
    # SGLang's values/valid_mask variant is refused by name, not misread
    engine, name, content = _generations(engine_case, rows)["sglang-uint16"]
    content["response"]["meta_info"]["routed_experts"] = {"values": "", "valid_mask": ""}
    with pytest.raises(EngineImportError, match="values and valid_mask"):
        import_engine(
            engine, _write(tmp_path / name, content), engine_case["folder"], out=tmp_path, run_id="d"
        )
    assert not any((tmp_path / run_id).exists() for run_id in "zsnd")


def test_a_replay_through_a_model_with_a_smaller_vocabulary_is_refused(
    engine_case: dict[str, Any], tmp_path: Path
) -> None:
    import copy

    source = sglang_file(tmp_path / "sglang.json", engine_case, engine_case["rows"])
    run, _ = import_engine("sglang", source, engine_case["folder"], out=tmp_path, run_id="engine")
    smaller = copy.deepcopy(engine_case["model"])
    smaller.resize_token_embeddings(min(engine_case["full"]) + 1)
    from inferoscope.capture import CaptureError

    with pytest.raises(CaptureError, match="do not fit this model's vocabulary"):
        replay(run, smaller, engine_case["tokenizer"], out=tmp_path, run_id="replay")
    assert not (tmp_path / "replay").exists()
    with pytest.raises(EngineImportError, match="no such checkpoint directory"):
        import_engine("sglang", source, tmp_path / "missing", out=tmp_path, run_id="other")
