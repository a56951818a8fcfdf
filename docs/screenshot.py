"""Regenerate docs/inferoscope-tui.svg: the app on the shipped example run, as exported by Textual.

python docs/screenshot.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from inferoscope.cli import EXAMPLE_RUN
from inferoscope_tui import InferoscopeApp

OUT = Path(__file__).resolve().parent / "inferoscope-tui.svg"


async def main() -> None:
    app = InferoscopeApp(EXAMPLE_RUN)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("l", "l", "l", "j", "j", "L", "L", "L")
        await pilot.pause()
        OUT.write_text(app.export_screenshot(title="inferoscope tui"))


if __name__ == "__main__":
    asyncio.run(main())
