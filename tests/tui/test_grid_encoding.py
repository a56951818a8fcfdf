"""64, 128 and 256 experts stay legible at 80 and 160 columns: ranks never fuse, nothing hides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.widgets.expert_grid import MARGIN, SELECTED_GLYPH, ExpertGrid, packing_for

from ..conftest import make_bundle_parts, write_raw_bundle
from .helpers import detail, grid_lines, settle

EXPERTS = [64, 128, 256]
SIZES = [(80, 24), (160, 50)]


def wide_bundle(folder: Path, experts: int) -> Path:
    return write_raw_bundle(folder, *make_bundle_parts(tokens=3, layers=16, experts=experts, top_k=8))


def test_the_encoding_is_chosen_by_the_room_there_is() -> None:
    assert packing_for(64, 8, 160 - MARGIN).packed is False  # 2 columns an expert
    assert packing_for(64, 8, 80 - MARGIN).group == 2
    assert packing_for(128, 8, 80 - MARGIN).group == 4
    assert packing_for(256, 8, 160 - MARGIN).group == 3
    assert packing_for(16, 2, 80 - MARGIN) == packing_for(16, 2, 80 - MARGIN)


@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("size", SIZES)
async def test_every_layer_shows_its_top_k_in_rank_order_without_scrolling(
    tmp_path: Path, experts: int, size: tuple[int, int]
) -> None:
    app = InferoscopeApp(wide_bundle(tmp_path / "b", experts))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        grid = app.query_one("#grid", ExpertGrid)
        assert grid.virtual_size.width <= grid.size.width  # no expert is off screen
        packing = grid.packing
        for row, line in zip(grid.rows, grid_lines(app), strict=False):
            body = line[MARGIN:]
            if packing.packed:
                ids = [int(x) for x in body.split()[-len(row.topk) :]]
                assert ids == row.topk  # the selected experts, in rank order
                cells = body[: -(-experts // packing.group)]
                assert cells.count(SELECTED_GLYPH) == len({e // packing.group for e in row.topk})
            else:
                assert not re.search(r"\d\d", body)  # two rank digits never touch
                assert sorted(int(d) for d in re.findall(r"\d", body)) == list(range(1, len(row.topk) + 1))


async def test_the_detail_pane_expands_the_cursor_cell_of_a_packed_grid(tmp_path: Path) -> None:
    app = InferoscopeApp(wide_bundle(tmp_path / "b", 256))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("L", "L", "L")
        grid = app.query_one("#grid", ExpertGrid)
        members = grid.cursor_group()
        assert len(members) == grid.packing.group > 1 and 3 in members
        lines = detail(app).splitlines()
        start = next(n for n, line in enumerate(lines) if line.startswith("cell"))
        shown = [lines[start][len("cell") :]]
        shown += [line for line in lines[start + 1 :] if line.startswith(" " * 9)][: len(members)]
        listed = " ".join(shown).split()
        assert [int(x.split(":")[0]) for x in listed[: len(members)]] == members
        width = app.query_one("#detail").content_region.width
        assert all(len(line) <= width for line in lines)  # wrapped under its values, never past the pane


@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("size", SIZES)
def test_snapshot_of_wide_layers(snap_compare, tmp_path_factory, experts: int, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.getbasetemp() / f"snap-experts-{experts}"  # a fixed path for the snapshot
    if not folder.exists():
        wide_bundle(folder, experts)
    assert snap_compare(InferoscopeApp(folder), terminal_size=size, run_before=settle, press=["j", "L"])
