"""Scramble mode (``s``): a deterministic null model through the same reader, derivation and views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferoscope.cli import EXAMPLE_RUN
from inferoscope.scramble import scrambled_twin
from inferoscope_tui import InferoscopeApp
from inferoscope_tui.screens.drill import DrillScreen
from inferoscope_tui.screens.overview import OverviewScreen
from inferoscope_tui.widgets.expert_grid import ExpertGrid

from .helpers import bundle_with_issues, detail, header, settle, strip


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "raw_trace.ndjson").read_text().splitlines() if line]


async def test_s_cycles_real_tokens_experts_real_and_labels_every_pane() -> None:
    real = _events(EXAMPLE_RUN)
    app = InferoscopeApp(EXAMPLE_RUN)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert app.model is not None and app.model.overview is not None
        real_load = {i: layer.load.copy() for i, layer in app.model.overview.items()}
        await pilot.press("l", "l", "l", "s")
        await settle(pilot)
        assert app.scramble == "tokens" and app.position == 3
        for text in (header(app), strip(app), detail(app)):
            assert "SCRAMBLED: tokens" in text
        assert "not the model's routing" in detail(app) and "motif" in detail(app)
        # per layer, the twin holds exactly the real routing vectors, only at other tokens
        assert app.model.overview is not None
        for index, layer in app.model.overview.items():
            assert np.array_equal(layer.load, real_load[index])
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
        assert "SCRAMBLED: tokens" in str(app.screen.title_text)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DrillScreen) and app.screen.title_text.startswith("SCRAMBLED: tokens")
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("escape", "s")
        await settle(pilot)
        assert app.scramble == "experts" and "SCRAMBLED: experts" in header(app)
        # every distribution keeps its shape: the sorted probabilities of each layer are the real ones
        grid = app.query_one("#grid", ExpertGrid)
        for row, layer in zip(grid.rows, real[3]["layers"], strict=True):
            assert row.probs is not None
            assert sorted(row.probs) == sorted(layer["router_probs"])
        await pilot.press("s")
        await pilot.pause()
        assert app.scramble is None and "SCRAMBLED" not in header(app) + strip(app) + detail(app)
        # a second visit reuses the twin already built
        await pilot.press("s")
        await pilot.pause()
        assert app.scramble == "tokens"


def test_the_twin_is_deterministic_and_derived_like_the_real_run(tmp_path: Path) -> None:
    one = scrambled_twin(EXAMPLE_RUN, "tokens", cache_root=tmp_path / "one")
    two = scrambled_twin(EXAMPLE_RUN, "tokens", cache_root=tmp_path / "two")
    for name in ("raw_trace.ndjson", "derived.ndjson", "motif_ledger.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    ledger = json.loads((one / "motif_ledger.json").read_text())
    real = json.loads((EXAMPLE_RUN / "motif_ledger.json").read_text())
    assert ledger["derivation_config_id"] == real["derivation_config_id"]
    assert scrambled_twin(EXAMPLE_RUN, "tokens", cache_root=tmp_path / "one") == one


async def test_a_run_with_issues_cannot_be_scrambled_and_stays_real(tmp_path: Path) -> None:
    app = InferoscopeApp(bundle_with_issues(tmp_path / "b"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        assert app.scramble is None
        assert any("cannot scramble this run" in str(n.message) for n in app._notifications)
