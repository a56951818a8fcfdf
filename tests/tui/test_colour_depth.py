"""On a 16-colour terminal the probability scale keeps its meaning: six named colours, none grey or red."""

from __future__ import annotations

import pytest
from rich.color import Color

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.widgets.expert_grid import PALETTE, PALETTE_16, ExpertGrid, level_of, palette_for

from ..conftest import VALID
from .helpers import settle

DEMO = VALID / "b_olmoe_64tok_16x64_top8"


def test_the_16_colour_palette_is_six_distinct_standard_colours_without_grey_or_red() -> None:
    numbers = [Color.parse(name).number for name in PALETTE_16]
    assert len(set(numbers)) == 6 and all(n is not None and n < 16 for n in numbers)
    greys_and_reds = {Color.parse(n).number for n in ("red", "bright_red", "white", "bright_black")}
    assert not greys_and_reds & set(numbers)


@pytest.mark.parametrize(
    ("system", "palette"),
    [("standard", PALETTE_16), ("windows", PALETTE_16), ("256", PALETTE), ("truecolor", PALETTE)],
)
def test_the_palette_follows_the_colour_depth_rich_detects(system: str, palette: tuple[str, ...]) -> None:
    assert palette_for(system) is palette


@pytest.mark.parametrize(("forced", "palette"), [("16", PALETTE_16), ("full", PALETTE), ("", PALETTE)])
async def test_the_grid_draws_with_the_chosen_palette(
    monkeypatch: pytest.MonkeyPatch, forced: str, palette: tuple[str, ...]
) -> None:
    monkeypatch.setenv("INFEROSCOPE_PALETTE", forced)  # headless: the full palette unless forced
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one("#grid", ExpertGrid)
        assert grid.palette is palette
        row = grid.rows[0]
        assert row.probs is not None
        levels = {level_of(p, len(row.probs)) for p in row.probs}
        drawn = {s.style.bgcolor.name for s in grid.render_line(0) if s.style and s.style.bgcolor}
        assert drawn and drawn <= {Color.parse(palette[level]).name for level in levels}


def test_snapshot_16_colours(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INFEROSCOPE_PALETTE", "16")
    assert snap_compare(InferoscopeApp(DEMO), terminal_size=(80, 24), run_before=settle, press=["l"])
