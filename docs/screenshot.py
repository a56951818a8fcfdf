"""Regenerate the screenshots in docs/ (as exported by Textual) from the shipped example run.

python docs/screenshot.py    (the compare screenshot captures two short runs: needs `.[capture]`)

- inferoscope-tui.svg: the main view with motif channels;
- run-view.svg: the run-level views (`v`);
- scrambled.svg: the token-scrambled twin (`s`);
- compare.svg: the micro model captured in float32 vs bfloat16, same prompt and sampling seed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from inferoscope.cli import EXAMPLE_RUN
from inferoscope_tui import InferoscopeApp

DOCS = Path(__file__).resolve().parent


async def shoot(app: InferoscopeApp, keys: list[str], name: str, size: tuple[int, int] = (100, 30)) -> None:
    async with app.run_test(size=size) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await app.workers.wait_for_complete()
            await pilot.pause()
        (DOCS / name).write_text(app.export_screenshot(title=f"inferoscope tui · {name[:-4]}"))


def capture_pair(root: Path) -> tuple[Path, Path]:
    from inferoscope.capture import capture_run
    from inferoscope.capture.demo import DEMO_PROMPT, MICRO_MODEL
    from inferoscope.capture.loading import load_local

    runs = []
    for dtype in ("float32", "bfloat16"):
        model, tokenizer = load_local(MICRO_MODEL, device="cpu", dtype=dtype)
        runs.append(
            capture_run(
                model,
                tokenizer,
                DEMO_PROMPT,
                max_new_tokens=120,
                out=root,
                run_id=f"micro-{dtype}",
                do_sample=True,
                seed=7,
                model_id="inferoscope/micro-olmoe-4x16",
            )
        )
    return runs[0], runs[1]


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["XDG_CACHE_HOME"] = str(Path(scratch) / "cache")
        await shoot(InferoscopeApp(EXAMPLE_RUN), [*"lll", "j", "j", *"LLL"], "inferoscope-tui.svg")
        await shoot(InferoscopeApp(EXAMPLE_RUN), ["v", "j", "l", "l", "l"], "run-view.svg")
        await shoot(InferoscopeApp(EXAMPLE_RUN), ["l", "l", "l", "s"], "scrambled.svg")
        a, b = capture_pair(Path(scratch) / "runs")
        from inferoscope.compare import compare_runs

        worst = compare_runs(a, b).worst_tokens(1)
        token = worst[0][0] if worst else 0
        keys = ["colon", *str(token), "enter", "j", "j", "j"]
        await shoot(InferoscopeApp(a, compare=b), keys, "compare.svg", size=(100, 34))


if __name__ == "__main__":
    asyncio.run(main())
