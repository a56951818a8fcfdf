"""``inferoscope tui RUN_A --compare RUN_B``: both grids, disagreements marked, agreement line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.screens.message import MessageScreen
from inferoscope_tui.widgets.expert_grid import ExpertGrid

from ..conftest import make_bundle_parts, write_raw_bundle
from .helpers import detail, header, plain, settle


def _pair(tmp_path: Path, *, seed_b: int = 0, tokens_b: int = 12, experts_b: int = 8) -> tuple[Path, Path]:
    a = write_raw_bundle(tmp_path / "a", *make_bundle_parts(tokens=12, layers=3, experts=8, run_id="run-a"))
    parts = make_bundle_parts(tokens=tokens_b, layers=3, experts=experts_b, seed=seed_b, run_id="run-b")
    return a, write_raw_bundle(tmp_path / "b", *parts)


def grid_lines_of(app: InferoscopeApp, selector: str) -> list[str]:
    grid = _grid(app, selector)
    return [grid.render_line(y).text for y in range(min(grid.size.height, len(grid.rows)))]


def _grid(app: InferoscopeApp, selector: str) -> ExpertGrid:
    return app.query_one(selector, ExpertGrid)


async def test_identical_runs_show_full_agreement_and_no_marks(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    app = InferoscopeApp(a, compare=a)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        for _step in range(3):
            for selector in ("#grid", "#grid-b"):
                rows = _grid(app, selector).rows
                assert len(rows) == 3 and all(r.compare_mark == " " and not r.diff_experts for r in rows)
            assert "Jaccard 1.00 · JSD 0.0000 bits" in detail(app)
            await pilot.press("l")
        line = plain(app, "#agreement")
        assert line.startswith("A↔B " + "█" * 12 + " ") and "here 1.00" in line


async def test_disagreements_are_marked_on_both_grids_where_the_top_k_sets_differ(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, seed_b=1)
    parts_a = make_bundle_parts(tokens=12, layers=3, experts=8, run_id="run-a")[1]
    parts_b = make_bundle_parts(tokens=12, layers=3, experts=8, seed=1, run_id="run-b")[1]
    app = InferoscopeApp(a, compare=b)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        assert app.comparison is not None
        for token in range(4):
            for layer in range(3):
                ka: list[Any] = parts_a[token]["layers"][layer]["topk_indices"]
                kb: list[Any] = parts_b[token]["layers"][layer]["topk_indices"]
                row_a, row_b = _grid(app, "#grid").rows[layer], _grid(app, "#grid-b").rows[layer]
                assert row_a.diff_experts == set(ka) - set(kb) and row_b.diff_experts == set(kb) - set(ka)
                expected = "≠" if ka[0] != kb[0] else ("~" if set(ka) != set(kb) else " ")
                assert row_a.compare_mark == row_b.compare_mark == expected
                drawn = _grid(app, "#grid").render_line(layer).text
                assert drawn[10] == expected
            await pilot.press("l")
        assert "A vs B" in detail(app) and "top-k Jaccard" in detail(app) and "top-1 A" in detail(app)
        assert "here" in plain(app, "#agreement")
        # where the sets differ, the detail gives the margin at the flipped expert
        comparison = app.comparison
        shown = 0
        for token in range(12):
            await pilot.press("home")
            for _step in range(token):
                await pilot.press("l")
            column = comparison.layers.index(app.cursor_layer) if app.cursor_layer in comparison.layers else 0
            margin = comparison.flip_margin[token, column]
            if margin == margin:  # not NaN: the sets differ here
                assert f"flip margin {margin:.2e}" in detail(app)
                shown += 1
            else:
                assert "flip margin" not in detail(app)
        assert shown > 0


async def test_a_shorter_run_b_and_another_expert_count_are_reported_not_crashed_on(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, tokens_b=5, experts_b=4)
    app = InferoscopeApp(a, compare=b)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        assert "B has 5 tokens" in header(app) and "run-b · clean" in plain(app, "#grid-b-title")
        assert all(row.compare_mark == "?" for row in _grid(app, "#grid").rows)
        await pilot.press("G")
        assert app.position == 11 and "run B ends at token 4" in plain(app, "#grid-b-title")
        assert "B: no token here" in detail(app)
        rows_b = grid_lines_of(app, "#grid-b")
        assert rows_b and all(
            "it ends at #4" in line and "unreadable" not in line for line in rows_b if line.strip()
        )
        notes = [line for line in detail(app).splitlines() if line.startswith("note")]
        assert any("different lengths" in n for n in notes) and any(
            "different expert counts" in n for n in notes
        )
        assert not app._notifications  # no toast covers grid B


async def test_an_unopenable_run_b_is_a_message_and_exit_code_1(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    app = InferoscopeApp(a, compare=tmp_path / "missing")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, MessageScreen)
        await pilot.press("q")
    assert app.return_code == 1


async def test_a_run_b_with_an_unreadable_first_event_opens_and_says_so(tmp_path: Path) -> None:
    import json

    manifest, events, layout = make_bundle_parts(tokens=4)
    a = write_raw_bundle(tmp_path / "a", manifest, events, layout)
    lines = ["{ not json", *(json.dumps(e, sort_keys=True) for e in events[1:])]
    events[2]["layers"][0]["topk_indices"] = 3
    lines[2] = json.dumps(events[2])
    b = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=lines)
    app = InferoscopeApp(a, compare=b)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        assert not isinstance(app.screen, MessageScreen) and app.comparison is not None
        assert any("not compared" in note for note in app.comparison.notes)
        for _ in range(4):
            await pilot.press("l")
        assert app.position == 3


async def test_d_goes_to_the_next_token_where_the_runs_disagree(tmp_path: Path) -> None:
    import numpy as np

    a, b = _pair(tmp_path, seed_b=1)
    app = InferoscopeApp(a, compare=b)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        comparison = app.comparison
        assert comparison is not None
        with np.errstate(invalid="ignore"):
            differs = ((comparison.same_set == 0) | (comparison.same_order == 0)).any(axis=1)
        ahead = [int(t) for t in np.flatnonzero(differs) if t > 0]  # from token 0 onwards
        assert len(ahead) >= 2
        visited = []
        for _ in ahead:
            await pilot.press("d")
            visited.append(app.position)
        assert visited == ahead
        await pilot.press("d")  # none further: it stays, and says so
        assert app.position == ahead[-1]
        await pilot.press("D")
        assert app.position == ahead[-2]
