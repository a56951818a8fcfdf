"""The app on contract v0.2 runs: the recorded selection, weights and scores, named by their function."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferoscope import RunReader
from inferoscope.synthetic import write_synthetic_v02
from inferoscope_tui import InferoscopeApp

from .helpers import detail, grid_lines, header, settle


async def test_a_deepseek_style_run_opens_steps_and_says_what_its_numbers_are(tmp_path: Path) -> None:
    run = write_synthetic_v02(tmp_path, "ds-run", 20, layers=3, experts=16, top_k=4, router="deepseek")
    app = InferoscopeApp(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "ds-run" in header(app) and "clean" in header(app)
        await pilot.press("l", "l")
        await settle(pilot)
        shown = detail(app)
        event = RunReader(run).token_event(2)
        layer = event.layers[0]
        assert "#2" in shown and "sigmoid score" in shown and "no sum to 1" in shown
        assert layer.weights is not None
        first = f"{layer.selected[0]}:{float(layer.weights[0]):.3g}"
        assert "weights" in shown and first in shown  # the applied weights, not recomputed ones
        assert "of sigmoid scores / their sum" in shown  # what the entropy is of
        rows = grid_lines(app)
        assert rows[0].startswith("L0") and sum(ch.isdigit() for ch in rows[0][14:]) >= 4


async def test_a_top_k_only_run_shows_the_selection_without_inventing_scores(tmp_path: Path) -> None:
    run = write_synthetic_v02(tmp_path, "topk", 5, layers=2, experts=8, top_k=2)
    manifest_path = run / "manifest.json"
    import json

    manifest = json.loads(manifest_path.read_text())
    for role in ("scores", "weights"):
        relpath = manifest["routing"]["groups"][0]["arrays"].pop(role)
        manifest["arrays"].pop(relpath)
        (run / relpath).unlink()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert RunReader(run).validate().ok
    selected = np.load(run / "arrays/moe.selected.npy")
    app = InferoscopeApp(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        rows = grid_lines(app)
        expected = " ".join(str(e) for e in selected[0, 0])
        assert f"no scores recorded · selected {expected}" in rows[0]
        assert "not recorded" in detail(app)
