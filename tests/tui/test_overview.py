"""Run-level views: numbers equal what the raw trace says, and every number leads to its tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from inferoscope.cli import EXAMPLE_RUN
from inferoscope_tui import InferoscopeApp
from inferoscope_tui.screens.drill import DrillScreen
from inferoscope_tui.screens.overview import OverviewScreen

from .helpers import bundle_with_issues, settle


def _events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "raw_trace.ndjson").read_text().splitlines() if line]


def _body(app: InferoscopeApp) -> str:
    content: Any = app.screen.query_one("#overview-body").content  # type: ignore[attr-defined]
    return str(content.plain)


async def _open_overview(app: InferoscopeApp, pilot) -> OverviewScreen:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press("v")
    await pilot.pause()
    assert isinstance(app.screen, OverviewScreen)
    return app.screen


async def test_load_and_pairs_match_the_raw_trace_and_drill_to_their_tokens() -> None:
    events = _events(EXAMPLE_RUN)
    app = InferoscopeApp(EXAMPLE_RUN)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _open_overview(app, pilot)
        body = _body(app)
        assert "RUN VIEW" in body and "expert load" in body and "co-activation · layer 0" in body
        other = np.zeros(16, dtype=int)
        for event in events:
            other[event["layers"][2]["topk_indices"]] += 1
        busiest = int(np.argmax(other))
        assert f"max e{busiest} x{other[busiest] * 16 / (2 * len(events)):.2f}" in body
        load = np.zeros(16, dtype=int)
        for event in events:
            load[event["layers"][0]["topk_indices"]] += 1
        # the load cell under the cursor lists exactly the tokens that picked that expert
        await pilot.press("l", "l", "l")
        assert f"e3: {load[3]} picks" in _body(app)
        await pilot.press("enter")
        await pilot.pause()
        drill = app.screen
        assert isinstance(drill, DrillScreen)
        expected = [t for t, e in enumerate(events) if 3 in e["layers"][0]["topk_indices"]]
        assert [position for position, _label in drill.rows] == expected and drill.total == len(expected)
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.screen is not screen and not isinstance(app.screen, DrillScreen)
        assert app.position == expected[1] and app.cursor_layer == 0 and app.cursor_expert == 3
        # the most frequent pair of layer 1, counted from the raw trace
        await pilot.press("v")
        await pilot.pause()
        await pilot.press("j", "tab", "tab")
        pairs: dict[tuple[int, int], int] = {}
        for event in events:
            a, b = sorted(event["layers"][1]["topk_indices"])
            pairs[(a, b)] = pairs.get((a, b), 0) + 1
        (a, b), count = max(pairs.items(), key=lambda item: (item[1], -item[0][0], -item[0][1]))
        assert f"e{a}+e{b} {count} tok" in _body(app)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DrillScreen) and app.screen.total == count


async def test_entropy_column_drills_to_its_token_range_and_text_jumps() -> None:
    app = InferoscopeApp(EXAMPLE_RUN)
    async with app.run_test(size=(100, 30)) as pilot:
        await _open_overview(app, pilot)
        await pilot.press("tab", "l", "l", "l", "enter")
        await pilot.pause()
        drill = app.screen
        assert isinstance(drill, DrillScreen)
        positions = [position for position, _label in drill.rows]
        assert positions == list(range(positions[0], positions[-1] + 1)) and positions[0] > 0
        assert "H/ln n 0." in drill.rows[0][1].plain
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
        await pilot.press("tab", "tab", "l", "l", "l", "l", "l", "enter")
        await pilot.pause()
        assert app.position == 5 and not isinstance(app.screen, OverviewScreen)


async def test_overview_is_not_offered_before_the_pass_and_skips_unusable_entries(tmp_path: Path) -> None:
    folder = bundle_with_issues(tmp_path / "b")
    app = InferoscopeApp(folder)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _open_overview(app, pilot)
        layer = screen.by_layer[1]
        # token 3 layer 1 was flagged and line 10 (token 9) is not JSON: neither is counted
        assert layer.tokens == 10 and layer.topk[3, 0] == -1 and layer.topk[9, 0] == -1
        assert np.isnan(layer.entropy[9]) and screen.by_layer[0].tokens == 11
        await pilot.press("escape")
        await pilot.pause()
    app = InferoscopeApp(folder)
    async with app.run_test(size=(100, 30)) as pilot:
        app.model.overview = None  # type: ignore[union-attr]  # as before the streaming pass ends
        await pilot.press("v")
        assert not isinstance(app.screen, OverviewScreen)


async def test_long_drill_lists_are_paged_and_every_token_is_reachable(tmp_path: Path) -> None:
    from ..conftest import make_bundle_parts, write_raw_bundle

    folder = write_raw_bundle(tmp_path / "long", *make_bundle_parts(tokens=600, layers=1, experts=2, top_k=1))
    events = _events(folder)
    expected = [t for t, e in enumerate(events) if e["layers"][0]["topk_indices"] == [0]]
    assert len(expected) > 200
    app = InferoscopeApp(folder)
    async with app.run_test(size=(100, 30)) as pilot:
        await _open_overview(app, pilot)
        await pilot.press("enter")
        await pilot.pause()
        drill = app.screen
        assert isinstance(drill, DrillScreen) and drill.total == len(expected) and drill.pages >= 2
        seen = []
        for _page in range(drill.pages):
            seen += [position for position, _label in drill.rows]
            await pilot.press("right_square_bracket")
        assert seen == expected
        await pilot.press("end", "enter")
        await pilot.pause()
        assert app.position == expected[-1]
