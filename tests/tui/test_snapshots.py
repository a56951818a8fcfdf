"""Screens as a person sees them, at 80x24 and 160x50: clean, with issues, and NO_COLOR."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inferoscope_tui import InferoscopeApp

from ..conftest import VALID
from .helpers import bundle_with_issues, settle

DEMO = VALID / "b_olmoe_64tok_16x64_top8"
SIZES = [(80, 24), (160, 50)]


@pytest.fixture
def issues_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a fixed path, so the snapshot does not depend on a random temp name
    folder = tmp_path_factory.getbasetemp() / "snap-issues"
    shutil.rmtree(folder, ignore_errors=True)
    return bundle_with_issues(folder)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_clean_bundle(snap_compare, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(DEMO), terminal_size=size, run_before=settle, press=["l", "l", "j", "L", "L"]
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bundle_with_issues(snap_compare, issues_bundle: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(issues_bundle), terminal_size=size, run_before=settle, press=["right_square_bracket"]
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_no_color(snap_compare, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(InferoscopeApp(DEMO), terminal_size=size, run_before=settle, press=["G"])


def test_help_screen(snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(DEMO), terminal_size=(80, 24), run_before=settle, press=["question_mark"]
    )


EXAMPLE = Path(__file__).resolve().parents[2] / "inferoscope" / "examples" / "demo-run"


def _then(*keys: str):  # type: ignore[no-untyped-def]
    """Settle, press ``keys`` and settle again (for views that build something in a worker)."""

    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        await pilot.press(*keys)
        await settle(pilot)

    return run


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_motif_channels(snap_compare, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        InferoscopeApp(EXAMPLE), terminal_size=size, run_before=_then("colon", "4", "0", "enter")
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_run_view(snap_compare, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(InferoscopeApp(EXAMPLE), terminal_size=size, run_before=_then("v", "j", "l", "l"))


def test_run_view_no_color(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(
        InferoscopeApp(EXAMPLE), terminal_size=(80, 24), run_before=_then("v", "tab", "tab", "tab")
    )


def test_scrambled(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert snap_compare(InferoscopeApp(EXAMPLE), terminal_size=(100, 30), run_before=_then("l", "s"))


def test_compare(snap_compare, tmp_path_factory: pytest.TempPathFactory) -> None:  # type: ignore[no-untyped-def]
    from ..conftest import make_bundle_parts, write_raw_bundle

    base = tmp_path_factory.getbasetemp() / "snap-compare"
    shutil.rmtree(base, ignore_errors=True)
    a = write_raw_bundle(base / "a", *make_bundle_parts(tokens=30, layers=4, experts=16, run_id="run-a"))
    parts = make_bundle_parts(tokens=30, layers=4, experts=16, run_id="run-b")
    other = make_bundle_parts(tokens=30, layers=4, experts=16, seed=5, run_id="run-b")[1]
    for token in (3, 11, 12):  # B routes layer 2 differently at three tokens (still a valid run)
        parts[1][token]["layers"][2] = other[token]["layers"][2]
    b = write_raw_bundle(base / "b", *parts)
    assert snap_compare(
        InferoscopeApp(a, compare=b), terminal_size=(100, 34), run_before=_then("l", "l", "l", "j", "j")
    )


@pytest.fixture
def deepseek_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepSeek-V3-style v0.2 run (sigmoid + bias, group-limited, one shared expert), fixed path."""
    from inferoscope.synthetic import write_synthetic_v02

    folder = tmp_path_factory.getbasetemp() / "snap-deepseek"
    shutil.rmtree(folder, ignore_errors=True)
    return write_synthetic_v02(folder, "deepseek-style", 40, layers=4, experts=32, top_k=4, router="deepseek")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_deepseek_style_run(snap_compare, deepseek_run: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Sigmoid scores named as such, coloured by their share, the bias-adjusted rank that chose the
    experts, the applied weights, and the shared expert as its own always-on column."""
    assert snap_compare(
        InferoscopeApp(deepseek_run), terminal_size=size, run_before=settle, press=["l", "j", "L", "L", "L"]
    )
