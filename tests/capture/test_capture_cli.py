"""``inferoscope capture`` on local checkpoints: success summary and one-line failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from inferoscope import RunReader

from .tiny_models import save_tiny, tokenizer_files


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INFEROSCOPE_DEBUG"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "inferoscope", "capture", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def olmoe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("olmoe", tmp_path_factory.mktemp("olmoe"))


def test_capture_writes_a_valid_bundle_and_says_how_to_open_it(olmoe: Path, tmp_path: Path) -> None:
    result = run(
        "--model",
        str(olmoe),
        "--prompt",
        "the quick brown fox",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path),
        "--run-id",
        "cli-run",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "captured 4 tokens" in result.stdout and f"inferoscope tui {tmp_path / 'cli-run'}" in result.stdout
    report = RunReader(tmp_path / "cli-run").validate()
    assert report.ok and report.aggregates.events == 4
    assert RunReader(tmp_path / "cli-run").manifest["model_id"] == str(olmoe)
    assert RunReader(tmp_path / "cli-run").profile == "v0.2"  # the default contract
    # capture writes the raw trace only; provisional motifs are a separate, named step
    assert not (tmp_path / "cli-run" / "derived.ndjson").exists()
    assert f"inferoscope derive {tmp_path / 'cli-run'}" in result.stdout


def test_existing_output_is_refused_before_generating(olmoe: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    result = run("--model", str(olmoe), "--prompt", "hi there", "--out", str(tmp_path), "--run-id", "taken")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "dense", "empty_prompt"])
def test_failures_are_one_line_with_exit_2(case: str, olmoe: Path, tmp_path: Path) -> None:
    model, prompt = str(olmoe), "the quick brown fox"
    if case == "missing":
        model = str(tmp_path / "nope")
    elif case == "not_a_checkpoint":
        model = str(tmp_path)
    elif case == "dense":
        folder = tmp_path / "dense"
        tokenizer = tokenizer_files(folder)
        LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
            )
        ).save_pretrained(folder)
        model = str(folder)
    else:
        prompt = "  "
    result = run("--model", model, "--prompt", prompt, "--out", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("inferoscope:")]
    assert len(lines) == 1
    expected = {
        "missing": "does not exist",
        "not_a_checkpoint": "no config.json",
        "dense": "no Mixture-of-Experts router",
        "empty_prompt": "prompt is empty",
    }[case]
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists()
