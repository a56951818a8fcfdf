"""The run-set overview: every run listed with its source and validation state; enter opens one;
p shows which experts lean to which source, with leans that beat the null marked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.widgets import DataTable, Static

from inferoscope.runset import run_set
from inferoscope_tui.run_set import RunSetApp
from inferoscope_tui.screens.specialisation import SpecialisationScreen

from ..test_specialise import write_doc
from .helpers import settle


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    for i in range(12):
        source = ("code", "prose")[i % 2]
        write_doc(tmp_path / "set", i, source, 40, 3 if source == "code" else None, rng)
    (tmp_path / "set" / "doc-000004" / "arrays" / "moe.scores.npy").write_bytes(b"junk")
    return tmp_path / "set"


def cells(app: RunSetApp, row: int) -> list[str]:
    table = app.query_one(DataTable)
    return [str(getattr(cell, "plain", cell)) for cell in table.get_row_at(row)]


async def test_runs_are_listed_checked_and_enter_opens_the_one_under_the_cursor(folder: Path) -> None:
    runs = run_set(folder)
    assert runs is not None
    app = RunSetApp(folder, runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert app.done
        assert cells(app, 0)[0] == "doc-000000" and cells(app, 0)[3] == "code"
        assert cells(app, 1)[3] == "prose" and cells(app, 1)[-1] == "clean"
        assert cells(app, 4)[-1] == "1 issue(s)"  # the broken run is named, the rest still listed
        title: Any = app.query_one("#runset-title", Static).content
        assert "12 runs · 12 checked · 11 clean" in title.plain
        await pilot.press("down", "down", "enter")
    assert app.return_value == runs[2]


async def test_p_shows_the_planted_lean_marked_and_chance_dimmed(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for i in range(12):
        source = ("code", "prose")[i % 2]
        write_doc(tmp_path / "set", i, source, 40, 3 if source == "code" else None, rng)
    runs = run_set(tmp_path / "set")
    assert runs is not None
    app = RunSetApp(tmp_path / "set", runs)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert isinstance(app.screen, SpecialisationScreen)
        body: Any = app.screen.query_one("#special-body", Static).content
        lines = body.plain.splitlines()
        layer0 = lines.index(next(line for line in lines if line.startswith("layer 0")))
        assert "beats the null" in lines[layer0]
        code = next(line for line in lines[layer0:] if line.strip().startswith("code"))
        assert re.match(r"\s*code\s+e3 x\d+\.\d\d\*", code), code  # the planted expert, marked
        layer1 = lines.index(next(line for line in lines if line.startswith("layer 1")))
        assert "within the null" in lines[layer1]  # no preference planted in layer 1
        assert not any("*" in line for line in lines[layer1 + 1 :])  # chance is never marked
        await pilot.press("escape")
        assert not isinstance(app.screen, SpecialisationScreen)


async def test_p_on_a_set_with_one_source_says_why(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(3):
        write_doc(tmp_path / "set", i, "code", 10, None, rng)
    runs = run_set(tmp_path / "set")
    assert runs is not None
    app = RunSetApp(tmp_path / "set", runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        body: Any = app.screen.query_one("#special-body", Static).content
        assert "cannot compare by source" in body.plain and "only one source" in body.plain
