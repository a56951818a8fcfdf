"""Every broken upstream bundle opens, with its issues listed and marked; replay is deterministic."""

from __future__ import annotations

import json

import pytest

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.screens.message import MessageScreen
from inferoscope_tui.widgets.issues_pane import IssuesPane

from ..conftest import INVALID, VALID
from .helpers import settle

BROKEN = sorted(p.name for p in INVALID.iterdir())


@pytest.mark.parametrize("name", BROKEN)
async def test_broken_upstream_bundle_opens_with_its_issues(name: str) -> None:
    expected = json.loads((INVALID / name / "expected.json").read_text())
    app = InferoscopeApp(INVALID / name)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert not isinstance(app.screen, MessageScreen)
        pane = app.query_one(IssuesPane)
        codes = {issue.code for issue in pane.all_issues}
        assert pane.all_issues and "issue" in str(app.query_one("#header").content)
        for item in expected["semantic_issues"] or []:
            assert item["code"] in codes
        for _ in range(app.count + 1):  # every token can be stepped through
            await pilot.press("l")
        assert app.position == app.count - 1


async def test_the_same_keys_give_the_same_screen() -> None:
    keys = ["l", "l", "j", "L", "colon", "3", "0", "enter", "right_square_bracket", "r", "G", "h"]
    screens = []
    for _ in range(2):
        app = InferoscopeApp(VALID / "b_olmoe_64tok_16x64_top8")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press(*keys)
            await pilot.pause()
            screens.append(app.export_screenshot(title="replay"))
    assert screens[0] == screens[1]


async def test_millions_of_issues_are_listed_in_part_and_every_one_stays_reachable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ..conftest import make_bundle_parts, write_raw_bundle
    from .helpers import settle

    manifest, events, layout = make_bundle_parts(tokens=1)
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=["{}"] * 3000)
    app = InferoscopeApp(folder)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        pane = app.query_one(IssuesPane)
        assert len(pane.all_issues) == 27_000 and len(pane.shown) == 1000
        assert "more here" in str(pane.get_option_at_index(1000).prompt)
        await pilot.press("G", "left_square_bracket")
        assert app.position == 2998  # ] and [ still step through every token with an issue
