"""The shipped micro model and ``inferoscope demo``: a real trained model, captured offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from inferoscope import RunReader, load_run_bundle
from inferoscope.capture.demo import MICRO_MODEL
from inferoscope.cli import EXAMPLE_RUN


def test_the_micro_model_ships_inside_the_package_and_is_small() -> None:
    files = {p.name for p in MICRO_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= files
    assert sum(p.stat().st_size for p in MICRO_MODEL.iterdir()) < 6 * 1024 * 1024
    training = json.loads((MICRO_MODEL / "training.json").read_text())
    assert (training["layers"], training["experts"], training["top_k"]) == (4, 16, 2)
    assert training["held_out_loss"] < 6.0  # well below uniform guessing (ln 2048 = 7.6)


def test_demo_captures_two_hundred_tokens_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "inferoscope", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "demo-run"
    assert f"inferoscope tui {run}" in result.stdout
    bundle = load_run_bundle(run)
    assert len(bundle["raw_events"]) == 200
    assert bundle["manifest"]["model_id"] == "inferoscope/micro-olmoe-4x16"
    assert bundle["manifest"]["seed"] == 7
    assert [layer["layer_index"] for layer in bundle["raw_events"][0]["layers"]] == [0, 1, 2, 3]
    # the demo derives provisional motifs, so the app opens with its motif channels
    assert len(bundle["derived_events"]) == 200 and "derived provisional motifs" in result.stdout
    assert bundle["manifest"]["derivation_config_id"] == "motifs/online-cosine-0.90"


def test_the_shipped_example_run_is_a_capture_of_the_micro_model() -> None:
    reader = RunReader(EXAMPLE_RUN)
    assert reader.validate().ok
    assert reader.manifest["model_id"] == "inferoscope/micro-olmoe-4x16"
    assert reader.manifest["capture_config"]["router_class"] == "OlmoeTopKRouter"
    assert (EXAMPLE_RUN / "derived.ndjson").is_file() and (EXAMPLE_RUN / "motif_ledger.json").is_file()
