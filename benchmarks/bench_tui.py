"""Terminal app: time to show token 0, step latency, run view and compare on 5,000 vs 50,000 tokens.

Uses the OLMoE-shaped bundles of bench_validate.py (generated under .bench/ if missing). The app
runs headless (Textual's test driver) at 80x24; each step is
timed as the app's own work per step (read the event, update every pane, draw the grid line
by line), and, for reference, a whole key press through Textual's test pilot (which adds its
own fixed waits). Prints, side by side: open→token 0, time until validation is done, median
and p99 of 1,000 steps, the median key press, and peak RSS.

    python benchmarks/bench_tui.py [--sizes 5000,50000] [--steps 1000] [--contracts v0.1,v0.2]
    python benchmarks/bench_tui.py --sizes 500000   # contract v0.2 only (write_synthetic_v02)

With ``--contracts v0.1,v0.2`` each size is measured as v0.1.0 NDJSON and as the same run
converted to contract v0.2 (float32 array files), side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_validate import ROOT, _peak_rss_mb, generate


async def measure(folder: Path, steps: int) -> dict[str, float]:
    from inferoscope_tui import InferoscopeApp

    start = time.perf_counter()
    app = InferoscopeApp(folder)
    async with app.run_test(size=(80, 24)) as pilot:
        while app.painted_at is None:
            await asyncio.sleep(0.005)
        first = app.painted_at - start
        assert app.position == 0 and "token #0 " in str(app.query_one("#header").content)
        await app.workers.wait_for_complete()
        ready = time.perf_counter() - start
        from inferoscope_tui.widgets.expert_grid import ExpertGrid

        grid = app.query_one(ExpertGrid)
        latencies, presses = [], []
        for i in range(steps):
            direction = 1 if (i // 200) % 2 == 0 else -1
            t = time.perf_counter()
            app.action_step(direction)  # the model read and every pane's update
            for y in range(grid.size.height):  # and the grid drawn line by line
                grid.render_line(y)
            latencies.append(time.perf_counter() - t)
        for i in range(min(steps, 200)):
            t = time.perf_counter()
            await pilot.press("l" if (i // 100) % 2 == 0 else "h")
            presses.append(time.perf_counter() - t)
        latencies.sort()
        presses.sort()
        # the run view: load heat strips, entropy sparklines, co-activation, text by top-1 expert,
        # all from the validation pass's aggregates (nothing is read again)
        t = time.perf_counter()
        app.action_overview()
        await pilot.pause()
        overview_s = time.perf_counter() - t
        t = time.perf_counter()
        await pilot.press("enter")  # drill: the tokens that picked the cursor expert
        drill_s = time.perf_counter() - t
    app_rss = _peak_rss_mb()  # the app's own high-water mark, before compare below adds its arrays
    from inferoscope.compare import compare_runs

    t = time.perf_counter()
    compare_runs(folder, folder)
    compare_s = time.perf_counter() - t
    return {
        "tokens": app.count,
        "first_token_s": first,
        "ready_s": ready,
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "press_median_ms": statistics.median(presses) * 1000,
        "peak_rss_mb": app_rss,
        "peak_rss_with_compare_mb": _peak_rss_mb(),
        "overview_ms": overview_s * 1000,
        "drill_ms": drill_s * 1000,
        "compare_s": compare_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / ".bench"))
    parser.add_argument("--contracts", default="v0.1,v0.2")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(Path(args.child), args.steps))))
        return
    from bench_commands import V02_FROM, bundle
    from bench_v02 import converted

    rows = []
    contracts = args.contracts.split(",")
    for size in (int(s) for s in args.sizes.split(",")):
        if size >= V02_FROM:  # as NDJSON it would be 14 GB: the shipped v0.2 generator, seeded
            plans = [("v0.2", bundle(size, 7))]
        else:
            folder = generate(Path(args.out) / f"olmoe-{size}", size)
            plans = [(c, folder if c == "v0.1" else converted(folder, "float32")) for c in contracts]
        for contract, target in plans:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(target), "--steps", str(args.steps)],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "contract": contract})
    print(
        f"{'tokens':>8}{'contract':>9}{'token 0 shown s':>17}{'validated s':>13}{'step median ms':>16}"
        f"{'step p99 ms':>13}{'key press ms':>14}{'peak RSS MiB':>14}"
    )
    for row in rows:
        print(
            f"{int(row['tokens']):>8}{row['contract']:>9}{row['first_token_s']:>17.3f}{row['ready_s']:>13.2f}"
            f"{row['median_ms']:>16.2f}{row['p99_ms']:>13.2f}{row['press_median_ms']:>14.1f}"
            f"{row['peak_rss_mb']:>14.0f}"
        )
    print(
        f"\n{'tokens':>8}{'contract':>9}{'run view open ms':>18}{'drill ms':>10}{'compare (self) s':>18}"
        f"{'RSS with compare MiB':>22}"
    )
    for row in rows:
        print(
            f"{int(row['tokens']):>8}{row['contract']:>9}{row['overview_ms']:>18.1f}{row['drill_ms']:>10.1f}"
            f"{row['compare_s']:>18.2f}{row['peak_rss_with_compare_mb']:>22.0f}"
        )


if __name__ == "__main__":
    main()
