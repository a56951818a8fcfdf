"""Every MoE family of the installed transformers, through ``scripts/family_sweep.py``: tiny models
with trained-like routing, loaded with ``from_pretrained``, captured as v0.2 and checked against
independent router hooks and 2,000 random positions per router."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: refused on purpose, with the reason the capture must give
REFUSED = {
    "doge": "returns no expert indices",
    "zaya": "no declared routing rule",
}


def _sweep() -> Any:
    spec = importlib.util.spec_from_file_location("family_sweep", ROOT / "scripts" / "family_sweep.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["family_sweep"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sweep = _sweep()
    work = tmp_path_factory.mktemp("families")
    return {name: sweep.sweep_one(name, name, work, tokens=4) for name in sorted(sweep.moe_families())}


def test_every_family_is_captured_faithfully_or_refused_with_its_reason(results: dict[str, Any]) -> None:
    statuses = {name: result.status for name, result in results.items()}
    assert not [n for n, s in statuses.items() if s in ("mismatch", "error")], {
        n: results[n].detail for n, s in statuses.items() if s in ("mismatch", "error")
    }
    captured = [name for name, status in statuses.items() if status == "captured"]
    assert len(captured) >= 52, f"{len(captured)} of {len(statuses)} families captured"
    for name, status in statuses.items():
        if status == "refused":
            assert name in REFUSED and REFUSED[name] in results[name].detail, (name, results[name].detail)


def test_the_biased_and_group_limited_families_are_among_the_captured(results: dict[str, Any]) -> None:
    for name in (
        "deepseek_v3",
        "deepseek_v32",
        "glm4_moe",
        "kimi_linear",
        "longcat_flash",
        "dots1",
        "ernie4_5_moe",
        "minimax_m2",
        "nemotron_h",
        "deepseek_v4",
        "llama4_text",
        "gemma4_text",
        "dbrx",
        "mistral4",
        "jetmoe",
    ):
        if name in results:
            assert results[name].status == "captured", (name, results[name].detail)
