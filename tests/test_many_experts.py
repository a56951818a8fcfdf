"""Memory stays bounded in the number of experts: 30,000 and 100,000 experts under an address-space cap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import resource, sys
cap = int(sys.argv[3]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import numpy as np
from inferoscope import RunReader
from inferoscope.extraction import MoELayerCaptureInput, PyTorchRunBundleRecorder
from inferoscope.summary import RunSummary

experts = int(sys.argv[2])
recorder = PyTorchRunBundleRecorder(
    run_id="many", model_id="m", tokenizer_id="t", prompt_text="p",
    derivation_version="d", derivation_config_id="c", created_at="2026-11-27T12:00:00Z",
)
rng = np.random.default_rng(0)
for t in range(4):
    recorder.record_generated_token(
        token_id=t, token_text="x", context_length=1 + t, decode_start_ms=t, decode_end_ms=t + 1,
        layer_inputs=[MoELayerCaptureInput(0, rng.standard_normal(experts), 8)],
    )
run = recorder.write_bundle(sys.argv[1])          # the writer validates with the reader
report = RunReader(run).validate()
layer = report.aggregates.layers[0]
pairs = layer.pairs.top(5)
summary = RunSummary.of(RunReader(run))
print(report.ok, layer.num_total_experts, len(pairs), summary.report.total)
"""


@pytest.mark.parametrize("experts", [30_000, 100_000])
def test_a_layer_of_many_experts_is_written_and_validated_under_a_memory_cap(
    tmp_path: Path, experts: int
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(experts), "1536"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", str(experts), "5", "0"]


async def test_the_run_view_of_many_experts_opens(tmp_path: Path) -> None:
    from inferoscope_tui import InferoscopeApp
    from inferoscope_tui.screens.overview import OverviewScreen

    from .conftest import make_bundle_parts, write_raw_bundle
    from .tui.helpers import settle

    folder = write_raw_bundle(tmp_path / "b", *make_bundle_parts(tokens=3, layers=2, experts=30_000, top_k=8))
    app = InferoscopeApp(folder)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.model is not None and app.model.report is not None and app.model.report.ok
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
