"""The header keeps the validation state, the position, SCRAMBLED and the play state at every width."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.text import Text

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.header import Part, fit_header

from ..conftest import make_bundle_parts, write_raw_bundle
from .helpers import header, settle


def _parts(run_id: str, model_id: str) -> list[Part]:
    return [
        Part(Text(" SCRAMBLED: tokens "), 2),
        Part(Text(run_id), 7, shrink_to=12),
        Part(Text(model_id), 8, shrink_to=8),
        Part(Text("token #199 of 200"), 1),
        Part(Text(" g_000 ✦"), 5),
        Part(Text("12 issues"), 0),
        Part(Text("paused 4 tok/s"), 3),
    ]


@pytest.mark.parametrize("width", [30, 40, 60, 80, 100, 160, 240])
def test_parts_are_dropped_by_priority_and_the_line_always_fits(width: int) -> None:
    line = fit_header(_parts("r" * 50, "m" * 50), width).plain
    assert len(line) <= width
    ranked = ["12 issues", "token #199 of 200", "SCRAMBLED", "paused 4 tok/s", "g_000"]
    shown = [part in line for part in ranked]
    assert shown == sorted(shown, reverse=True), line  # nothing shown while a more important part is not
    assert "12 issues" in line


def test_ids_are_shortened_with_an_ellipsis_before_anything_is_dropped() -> None:
    line = fit_header(_parts("run-" + "x" * 46, "model-" + "y" * 44), 100).plain
    assert "…" in line and "run-x" in line
    for part in ("12 issues", "token #199 of 200", "SCRAMBLED", "paused 4 tok/s", "g_000"):
        assert part in line


def test_a_long_id_is_capped_after_escaping_not_before() -> None:
    escaped = "\\x1b" * 40  # what 40 ESC characters look like once made visible
    line = fit_header(_parts(escaped, "m"), 300).plain
    assert len(line) < 140 and "…" in line


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_the_app_header_with_long_and_hostile_ids(tmp_path: Path, size: tuple[int, int]) -> None:
    manifest, events, layout = make_bundle_parts(tokens=5, run_id="r" * 50)
    manifest["model_id"] = "\x1b" * 40 + "m" * 10
    app = InferoscopeApp(write_raw_bundle(tmp_path / "b", manifest, events, layout))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("G")
        shown = header(app)
        assert len(shown) <= size[0] - 2 and "\x1b" not in shown
        assert "clean" in shown and "token #4 of 5" in shown and "paused" in shown
        assert "rrrrrrrr" in shown  # the run_id is shortened, not dropped, while there is room
