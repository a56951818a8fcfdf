"""Regenerate the screenshots in docs/ (as exported by Textual) from the shipped example run.

python docs/screenshot.py    (the compare screenshot captures two short runs: needs `.[capture]`)

- inferoscope-tui.svg: the main view with motif channels, at 80x24 (what most terminals show);
- inferoscope-tui-wide.svg: the same at 160x50;
- olmoe-64-experts.svg: an OLMoE-shaped run (16 layers x 64 experts, top-8) at 80x24;
- run-view.svg: the run-level views (`v`), 80x24;
- scrambled.svg: the token-scrambled twin (`s`), 80x24;
- compare.svg: the micro model captured in float32 vs bfloat16, same prompt and sampling seed.

The SVGs name no web font (an ``<img>`` cannot load one, and spacing would drift): text is
drawn in the viewer's local monospace font.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path

from inferoscope.cli import EXAMPLE_RUN
from inferoscope_tui import InferoscopeApp

DOCS = Path(__file__).resolve().parent


LOCAL_FONTS = '"DejaVu Sans Mono", Menlo, Consolas, "Liberation Mono", monospace'


def without_web_fonts(svg: str) -> str:
    """The SVG with its @font-face rules (remote font files) removed and a local monospace stack."""
    svg = re.sub(r"\s*@font-face \{.*?\}", "", svg, flags=re.S)
    return svg.replace("font-family: Fira Code, monospace;", f"font-family: {LOCAL_FONTS};")


async def shoot(app: InferoscopeApp, keys: list[str], name: str, size: tuple[int, int] = (80, 24)) -> None:
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        svg = app.export_screenshot(title=f"inferoscope tui · {name[:-4]} · {size[0]}x{size[1]}")
        (DOCS / name).write_text(without_web_fonts(svg))


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    """Until no background work is pending (the loading pass starts after the first paint)."""
    app = pilot.app
    for _ in range(1200):
        await app.workers.wait_for_complete()
        await pilot.pause()
        model = app.model
        done = model is None or app.open_error or (model.report is not None and not _busy(app))
        if done and (app.model_b is None or app.comparison is not None):
            return
        await pilot.pause(0.05)


def _busy(app: InferoscopeApp) -> bool:
    from textual.worker import WorkerState

    return any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in app.workers)


def olmoe_shaped(root: Path) -> Path:
    """A 24-token OLMoE-shaped run (16 x 64, top-8) of seeded random logits."""
    import numpy as np

    from inferoscope.extraction import MoELayerCaptureInput, PyTorchRunBundleRecorder

    logits = np.random.default_rng(7).standard_normal((24, 16, 64)) * 1.5
    recorder = PyTorchRunBundleRecorder(
        run_id="olmoe-shaped-24tok",
        model_id="allenai/OLMoE-1B-7B-0125 (shape only; seeded random logits)",
        tokenizer_id="allenai/OLMoE-1B-7B-0125",
        prompt_text="The quick brown fox",
        derivation_version="motifs/v0.1.0-alpha",
        derivation_config_id="motifs/default-alpha",
        created_at="2026-11-27T12:00:00Z",
    )
    for t in range(24):
        recorder.record_generated_token(
            token_id=1000 + t,
            token_text=f" tok{t}",
            context_length=5 + t,
            decode_start_ms=10.0 * t,
            decode_end_ms=10.0 * t + 8.0,
            layer_inputs=[MoELayerCaptureInput(layer, logits[t, layer], 8) for layer in range(16)],
        )
    return recorder.write_bundle(root)


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
        await shoot(
            InferoscopeApp(EXAMPLE_RUN),
            [*"lll", "j", "j", *"LLL"],
            "inferoscope-tui-wide.svg",
            size=(160, 50),
        )
        await shoot(InferoscopeApp(olmoe_shaped(Path(scratch))), ["l", "j", "L"], "olmoe-64-experts.svg")
        await shoot(InferoscopeApp(EXAMPLE_RUN), ["v", "j", "l", "l", "l"], "run-view.svg")
        await shoot(InferoscopeApp(EXAMPLE_RUN), ["l", "l", "l", "s"], "scrambled.svg")
        a, b = capture_pair(Path(scratch) / "runs")
        from inferoscope.compare import compare_runs

        worst = compare_runs(a, b).worst_tokens(1)
        token = worst[0][0] if worst else 0
        keys = ["colon", *str(token), "enter", "j", "j", "j"]
        await shoot(InferoscopeApp(a, compare=b), keys, "compare.svg", size=(80, 34))


if __name__ == "__main__":
    asyncio.run(main())
