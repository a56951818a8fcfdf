"""The app opens every odd bundle, shows its issues and lets every token be stepped through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.screens.message import MessageScreen
from inferoscope_tui.screens.overview import OverviewScreen

from ..conftest import make_bundle_parts, write_raw_bundle
from .helpers import detail, header, settle

ODD_LAYER_FIELDS: list[tuple[str, Any]] = [
    ("topk_indices", 3),
    ("topk_indices", {"a": 1}),
    ("router_probs", {"a": 1}),
    ("router_probs", "x"),
    ("layer_index", -(2**70)),
    ("num_total_experts", 2**64),
    ("entropy", int("9" * 401)),
    ("top1_prob", None),
]


@pytest.mark.parametrize(("field", "value"), ODD_LAYER_FIELDS)
async def test_an_odd_layer_value_is_shown_as_an_issue_and_never_crashes(
    tmp_path: Path, field: str, value: Any
) -> None:
    manifest, events, layout = make_bundle_parts(tokens=4)
    events[1]["layers"][0][field] = value
    lines = [json.dumps(e, sort_keys=True) for e in events]
    lines[2] = json.dumps({**events[2], "layers": "not a list"})
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=lines)
    app = InferoscopeApp(folder)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert not isinstance(app.screen, MessageScreen) and "issue" in header(app)
        for _ in range(4):
            await pilot.press("l", "j", "L")
        assert app.position == 3
        await pilot.press("colon", "1", "enter", "r")
        assert "raw_trace.ndjson, as stored" in detail(app)
        await pilot.press("r", "v")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)


async def test_hostile_text_of_every_kind_stays_data_in_every_pane(tmp_path: Path) -> None:
    texts = ["e" + "\u0301" * 120, "a\u200bb\u061cc", "rtl\u202eevil", "[bold]x[/]", "\x1b]52;c;SGk=\x07"]
    manifest, events, layout = make_bundle_parts(tokens=len(texts), token_texts=texts)
    manifest["prompt"]["text"] = "he" + "\u0301" * 50
    lines = [json.dumps(e, sort_keys=True) for e in events]
    lines[0] = lines[0].replace(json.dumps(texts[0]), '"lone \\ud800 surrogate"')
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=lines)
    app = InferoscopeApp(folder)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.export_screenshot()
        assert "\\ud800" in screen.replace("&#160;", " ") or "\\ud800" in detail(app)
        for _ in texts:
            await pilot.press("l")
        shown = app.export_screenshot()
        assert (
            "\u0301" * 3 not in shown
            and "\u200b" not in shown
            and "\u202e" not in shown
            and "\x1b" not in shown
        )
