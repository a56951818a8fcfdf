"""Text from a bundle is data: never markup, never control sequences on the terminal."""

from __future__ import annotations

from pathlib import Path

from inferoscope_tui import InferoscopeApp

from .helpers import detail, header, hostile_bundle, settle, strip


async def test_hostile_token_texts_are_shown_visibly_and_never_interpreted(tmp_path: Path) -> None:
    app = InferoscopeApp(hostile_bundle(tmp_path / "b"))
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        shown = strip(app)
        for visible_form in (
            "[bold red]x[/]",
            "\\x1b[2J",
            "\\x1b]52;c;SGVsbG8=\\x07",
            "two\\nlines",
            "tab\\there",
        ):
            assert visible_form in shown
        assert "prompt\\x1b[H" in shown
        assert "run [red]x[/red]" in header(app) and "\\x1b[31mmodel" in header(app)
        for text in (shown, header(app), detail(app)):
            assert "\x1b" not in text and "\x07" not in text
        assert "\n" not in shown and "\t" not in shown
        await pilot.press("l", "r")
        raw = detail(app)
        assert "\\u001b[2J" in raw and "\x1b" not in raw
        screen = app.export_screenshot()
        assert "\x1b" not in screen and "\x07" not in screen


async def test_searching_for_markup_text_finds_it_literally(tmp_path: Path) -> None:
    app = InferoscopeApp(hostile_bundle(tmp_path / "b"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"[bold", "enter")
        assert app.position == 0
        await pilot.press("slash", *"tab", "enter")
        assert app.position == 4
