"""Every key and pane, driven with Pilot, asserting state and what the panes show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.screens.help import HelpScreen
from inferoscope_tui.screens.message import MessageScreen
from inferoscope_tui.widgets.expert_grid import ExpertGrid
from inferoscope_tui.widgets.issues_pane import IssuesPane

from ..conftest import VALID, make_bundle_parts, write_raw_bundle
from .helpers import bundle_with_issues, detail, grid_lines, header, settle, strip

DEMO = VALID / "b_olmoe_64tok_16x64_top8"


async def test_opens_on_token_zero_with_header_and_all_sixteen_layers() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.position == 0
        assert "olmoe-64tok-seed7" in header(app) and "token #0 of 64" in header(app)
        assert "clean" in header(app)
        lines = grid_lines(app)
        assert [line.split()[0] for line in lines[:16]] == [f"L{i}" for i in range(16)]
        assert "The quick brown fox" in strip(app) and "tok0" in strip(app)


async def test_stepping_keys_move_and_stop_at_the_ends() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("h")
        assert app.position == 0
        await pilot.press("l", "right", "l")
        assert app.position == 3
        await pilot.press("left")
        assert app.position == 2
        await pilot.press("G")
        assert app.position == 63 and "token #63 of 64" in header(app)
        await pilot.press("l")
        assert app.position == 63
        await pilot.press("g")
        assert app.position == 0


async def test_go_to_index_and_bad_input() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("colon", *"40", "enter")
        assert app.position == 40 and "tok40" in detail(app)
        await pilot.press("colon", *"abc", "enter")
        assert app.position == 40
        await pilot.press("colon", *"999", "enter")
        assert app.position == 63
        said = " ".join(str(n.message) for n in app._notifications)
        assert "there is no token #999: went to #63" in said


async def test_search_and_next_previous_match() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"tok17", "enter")
        assert app.position == 17
        await pilot.press("slash", *"tok1", "enter")
        assert app.position == 17
        await pilot.press("n")
        assert app.position == 18
        await pilot.press("N", "N")
        assert app.position == 16
        assert "/tok1" in header(app)


async def test_next_and_previous_issue_and_marks(tmp_path: Path) -> None:
    app = InferoscopeApp(bundle_with_issues(tmp_path / "b"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert "issues" in header(app)
        await pilot.press("right_square_bracket")
        assert app.position == 3
        lines = grid_lines(app)
        assert lines[1].startswith("L1") and "!" in lines[1][:12]
        assert "‼" in strip(app)
        await pilot.press("right_square_bracket")
        assert app.position == 7
        await pilot.press("right_square_bracket")
        assert app.position == 9
        assert "unreadable event" in detail(app) and "line 10" in detail(app)
        await pilot.press("l")
        assert app.position == 10 and "w10" in detail(app)
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert app.position == 7


async def test_layer_and_expert_cursor_drive_the_detail_pane() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("j", "j", "down", "k")
        assert app.cursor_layer == 2
        await pilot.press("L", "L", "shift+right", "H")
        assert app.cursor_expert == 2
        event = json.loads((DEMO / "raw_trace.ndjson").read_text().splitlines()[0])
        layer = event["layers"][2]
        shown = detail(app)
        assert "layer 2" in shown and "expert 2" in shown
        assert f"{layer['router_probs'][2]:.4g}" in shown
        await pilot.press("l")
        assert app.cursor_layer == 2 and app.cursor_expert == 2


async def test_raw_view_shows_the_event_exactly_as_stored() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("l", "r")
        line = (DEMO / "raw_trace.ndjson").read_text().splitlines()[1]
        assert line in detail(app).replace("\n", "")
        await pilot.press("r")
        assert "layer 0" in detail(app)


async def test_copy_sends_the_current_event_json(monkeypatch: pytest.MonkeyPatch) -> None:
    app = InferoscopeApp(DEMO)
    copied: list[str] = []
    monkeypatch.setattr(app, "copy_to_clipboard", copied.append)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("l", "l", "y")
    assert copied == [(DEMO / "raw_trace.ndjson").read_text().splitlines()[2]]


async def test_play_pause_and_speed() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("plus", "plus", "plus")
        assert "32 tok/s" in header(app)
        # played at 4 tok/s: the 64 tokens take 16 s, so a loaded machine cannot reach the end
        # (and stop) before the header is read
        await pilot.press("minus", "minus", "minus")
        assert " 4 tok/s" in header(app)
        await pilot.press("space")
        assert "▶" in header(app)
        for _ in range(1200):  # playing steps on its own (however slowly a loaded machine ticks)
            await pilot.pause(0.025)
            if app.position > 2:
                break
        await pilot.press("space")
        moved = app.position
        assert moved > 2 and "paused" in header(app)
        await pilot.pause(0.2)
        assert app.position == moved
        await pilot.press("plus", "plus", "plus", "minus")
        assert "16 tok/s" in header(app)


async def test_issues_pane_lists_filters_and_jumps(tmp_path: Path) -> None:
    app = InferoscopeApp(bundle_with_issues(tmp_path / "b"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        pane = app.query_one(IssuesPane)
        codes = {issue.code for issue in pane.all_issues}
        assert {"topk_prob_mismatch", "decode_duration_mismatch", "json_parse_error"} <= codes
        assert isinstance(app.focused, ExpertGrid)
        await pilot.press("tab")
        assert app.focused is app.query_one("#detail")
        await pilot.press("tab")
        assert app.focused is pane
        await pilot.press("f")
        assert pane.code_filter == sorted(codes)[0]
        while pane.code_filter != "topk_prob_mismatch":
            await pilot.press("f")
        assert len(pane.shown) == 1
        await pilot.pause()
        screen = app.export_screenshot().replace("&#160;", " ")
        assert "only topk_prob_mismatch" in screen  # the filter is drawn, in the pane's top rule
        assert pane.styles.border_top[1] != app.query_one("#detail").styles.border_top[1]  # focus shows
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.position == 3 and app.cursor_layer == 1
        assert app.cursor_expert == pane.shown[0].location.expert_index
        assert isinstance(app.focused, ExpertGrid)
        assert "topk_probs[1]" in detail(app)


async def test_help_is_built_from_the_live_bindings() -> None:
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        descriptions = {description for _key, description in app.screen.rows}
        live = {a.binding.description for a in app.screen_stack[-2].active_bindings.values()}
        assert descriptions == live
        assert {
            "Next",
            "Prev",
            "Go to",
            "Search",
            "Next issue",
            "Play",
            "Raw JSON",
            "Quit",
            "Layer ↓",
            "Expert →",
        } <= descriptions
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)


async def test_open_at_token_option_and_quit() -> None:
    app = InferoscopeApp(DEMO, token=20)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.position == 20
        await pilot.press("q")
    assert app.return_code == 0


async def test_unopenable_bundle_shows_a_message_and_exits_1(tmp_path: Path) -> None:
    app = InferoscopeApp(tmp_path / "nothing-here")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, MessageScreen)
        await pilot.press("q")
    assert app.return_code == 1


async def test_no_color_grid_uses_a_glyph_ramp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = InferoscopeApp(DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(ExpertGrid)
        assert grid.no_color
        cells = "".join(line[11:] for line in grid_lines(app)[:16])
        assert set(cells) & set(".:-=#") and set(cells) & set("12345678")


async def test_quit_stops_a_slow_background_pass_instead_of_waiting_for_it(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=1)
    lines = [
        f'{{"token_index": {i}, "x{i}": []}}' for i in range(40_000)
    ]  # slow: every line its own problems
    app = InferoscopeApp(write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=lines))
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(500):
            await pilot.pause(0.01)
            if app.painted_at is not None and app.status in ("indexing", "validating"):
                break
        await pilot.press("q")
    assert app.stopping and app.model is not None and app.model.report is None  # stopped, not finished
