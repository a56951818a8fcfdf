"""Screens as a person sees them, at 80x24 and 160x50: clean, with issues, and NO_COLOR."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inferoscope_tui import InferoscopeApp

from ..conftest import VALID
from .helpers import bundle_with_issues

DEMO = VALID / "b_olmoe_64tok_16x64_top8"
SIZES = [(80, 24), (160, 50)]


async def _settle(pilot) -> None:  # type: ignore[no-untyped-def]
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.fixture
def issues_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a fixed path, so the snapshot does not depend on a random temp name
    folder = tmp_path_factory.getbasetemp() / "snap-issues"
    shutil.rmtree(folder, ignore_errors=True)
    return bundle_with_issues(folder)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_clean_bundle(snap_compare, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(DEMO), terminal_size=size, run_before=_settle, press=["l", "l", "j", "L", "L"]
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bundle_with_issues(snap_compare, issues_bundle: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(issues_bundle), terminal_size=size, run_before=_settle, press=["right_square_bracket"]
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_no_color(snap_compare, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(InferoscopeApp(DEMO), terminal_size=size, run_before=_settle, press=["G"])


def test_help_screen(snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(DEMO), terminal_size=(80, 24), run_before=_settle, press=["question_mark"]
    )
