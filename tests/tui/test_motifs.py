"""Motif channels: global wash, layer accents, fit as strength, novelty as a glyph, raw one key away."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from inferoscope.cli import EXAMPLE_RUN
from inferoscope.derive import write_derived
from inferoscope_tui import InferoscopeApp
from inferoscope_tui.motifs import GLOBAL_COLOURS, LAYER_COLOURS, MotifIndex, MotifMark
from inferoscope_tui.widgets.expert_grid import ExpertGrid, faded

from ..conftest import make_bundle_parts, write_raw_bundle
from .helpers import HOSTILE_TEXTS, detail, header, settle


def _derived(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "derived.ndjson").read_text().splitlines()]


async def test_every_channel_shows_the_derived_assignment_of_the_token() -> None:
    derived = _derived(EXAMPLE_RUN)
    app = InferoscopeApp(EXAMPLE_RUN)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        grid = app.query_one("#grid", ExpertGrid)
        for position in (0, 1, 40, 199):
            await pilot.press("colon", *str(position), "enter")
            await pilot.pause()
            payload = derived[position]["derived_payload"]
            motif = payload["global_motif"]
            assert f" {motif['motif_id']} " in header(app)
            assert ("✦" in header(app)) == motif["novel"]
            global_line = next(line for line in detail(app).splitlines() if line.startswith("global"))
            assert global_line.split()[1] == motif["motif_id"] and f"fit {motif['fit']:.3f}" in global_line
            assert ("✦new" in global_line) == motif["novel"]
            for row, layer in zip(grid.rows, payload["layer_motifs"], strict=True):
                mark = MotifMark(layer["motif_id"], layer["fit"], layer["novel"])
                assert row.motif_colour == mark.colour(LAYER_COLOURS)
                assert row.motif_novel == layer["novel"]
                drawn = grid.render_line(grid.rows.index(row)).text
                assert drawn[12] == ("✦" if layer["novel"] else " ")
        # the strip is washed with each token's global motif colour
        strip: Any = app.query_one("#strip").content  # type: ignore[attr-defined]
        backgrounds = {str(span.style) for span in strip.spans if " on #" in str(span.style)}
        assert backgrounds
        # raw one key away: the stored derived line next to the raw event
        await pilot.press("r")
        assert "derived.ndjson (provisional), as stored:" in detail(app)
        assert json.dumps(derived[199], sort_keys=True)[:40] in detail(app).replace("\n", "")
        # and the motif channels can be switched off to look at routing alone
        await pilot.press("r", "m")
        assert derived[199]["derived_payload"]["global_motif"]["motif_id"] not in header(app)
        assert all(row.motif_colour is None for row in grid.rows)


def test_fit_is_strength_and_novelty_is_never_a_colour() -> None:
    index = MotifIndex(threshold=0.9)
    strong, weak, unknown = (
        MotifMark("g_004", 1.0, False),
        MotifMark("g_004", 0.9, False),
        MotifMark("g_004", None, False),
    )
    assert index.strength(strong) == 1.0 and index.strength(weak) < 0.3 and index.strength(unknown) < 0.5
    assert MotifMark("g_004", 1.0, True).colour(GLOBAL_COLOURS) == strong.colour(GLOBAL_COLOURS)
    assert faded("#ff0000", index.strength(weak)) != faded("#ff0000", index.strength(strong))
    grid = ExpertGrid()
    from inferoscope_tui.widgets.expert_grid import GridRow

    thin = grid._motif_accent(GridRow(0, [0], [1.0], motif_colour="#ff0000", motif_fit_strength=0.2))
    full = grid._motif_accent(GridRow(0, [0], [1.0], motif_colour="#ff0000", motif_fit_strength=1.0))
    assert (thin.text, full.text) == ("╎", "▌")


async def test_hostile_and_malformed_derived_payloads_are_shown_as_data(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=len(HOSTILE_TEXTS), layers=2)
    folder = write_raw_bundle(tmp_path / "h", manifest, events, layout)
    lines = []
    for position, text in enumerate(HOSTILE_TEXTS):
        payload: Any = {"global_motif": {"motif_id": text, "fit": "high", "novel": "yes"}, "layer_motifs": 7}
        if position == 1:
            payload = {"global_motif": None, "layer_motifs": [{"layer_index": 0, "motif_id": 3}]}
        lines.append(
            json.dumps({"event_type": "token_derived", "token_index": position, "derived_payload": payload})
        )
    lines.insert(2, "{ not json")
    (folder / "derived.ndjson").write_text("\n".join(lines) + "\n")
    app = InferoscopeApp(folder)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert app.model is not None and app.model.motifs is not None
        assert app.model.motifs.unreadable_lines == 1
        assert "[bold red]x[/]" in header(app) and "fit not recorded" in detail(app)
        for _ in HOSTILE_TEXTS:
            await pilot.press("l")
            assert "\x1b" not in header(app) + detail(app)
        await pilot.press("r")
        assert "\x1b" not in detail(app)


async def test_the_exact_matcher_is_named_beside_the_motifs(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(EXAMPLE_RUN, folder)
    summary = write_derived(folder, threshold=None)
    assert summary["matcher"] == "motifs/exact-fingerprint"
    app = InferoscopeApp(folder)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert "motifs/exact-fingerprint" in detail(app)
