"""Helpers for driving the app: open it on a bundle, read what the panes show."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Static
from textual.worker import WorkerState

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.widgets.detail import DetailPane
from inferoscope_tui.widgets.expert_grid import ExpertGrid

from ..conftest import make_bundle_parts, write_raw_bundle

HOSTILE_TEXTS = ["[bold red]x[/]", "\x1b[2J", "\x1b]52;c;SGVsbG8=\x07", "two\nlines", "tab\there", " ok"]


async def settle(pilot: Pilot[Any], timeout: float = 120.0) -> None:
    """Wait until every piece of background work of the app has finished.

    The app starts its loading worker only after token 0 is painted, and starts more workers
    from keys (search texts, scramble twins) and from callbacks; so waiting for the workers
    that exist *now* is not enough. This waits until no worker is pending or running AND the
    app says its work is done: the run validated (or could not be opened), run B validated and
    compared in compare mode. Every TUI test waits through this one helper.
    """
    app: Any = pilot.app
    deadline = time.monotonic() + timeout
    while True:
        await app.workers.wait_for_complete()
        await pilot.pause()
        if _work_done(app):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"background work of the app did not finish in {timeout:.0f} s")
        await pilot.pause(0.05)


def _work_done(app: Any) -> bool:
    if any(worker.state in (WorkerState.PENDING, WorkerState.RUNNING) for worker in app.workers):
        return False
    if not isinstance(app, InferoscopeApp):
        return True
    if app.open_error or app.model is None or app.model.fatal_problem:
        return True
    if app.painted_at is None or app.model.report is None:
        return False
    if app.real_model is not None and app.real_model.report is None:
        return False
    return app.model_b is None or app.comparison is not None


def plain(app: InferoscopeApp, selector: str) -> str:
    widget = app.query_one(selector, Static)
    content: Any = widget.content
    return content.plain if hasattr(content, "plain") else str(content)


def header(app: InferoscopeApp) -> str:
    return plain(app, "#header")


def strip(app: InferoscopeApp) -> str:
    return plain(app, "#strip")


def detail(app: InferoscopeApp) -> str:
    return plain(app.query_one(DetailPane), "#detail-body")


def grid_lines(app: InferoscopeApp) -> list[str]:
    grid = app.query_one(ExpertGrid)
    return [grid.render_line(y).text for y in range(grid.size.height)]


def bundle_with_issues(folder: Path) -> Path:
    """12 tokens, 3 layers x 8 experts; issues at tokens 3 (layer 1, expert) and 7; line 10 broken."""
    manifest, events, layout = make_bundle_parts(
        tokens=12, layers=3, experts=8, top_k=2, token_texts=[f" w{t}" for t in range(12)]
    )
    layer = events[3]["layers"][1]
    layer["topk_probs"][1] *= 0.5
    events[7]["timing_ms"]["decode_duration"] += 5
    import json

    raw = [json.dumps(e, sort_keys=True) for e in events]
    raw[9] = "{ this line is not json"
    return write_raw_bundle(folder, manifest, events, layout, raw_lines=raw)


def hostile_bundle(folder: Path) -> Path:
    manifest, events, layout = make_bundle_parts(
        tokens=len(HOSTILE_TEXTS), token_texts=HOSTILE_TEXTS, run_id="run [red]x[/red]"
    )
    manifest["model_id"] = "\x1b[31mmodel"
    manifest["prompt"]["text"] = "prompt\x1b[H"
    return write_raw_bundle(folder, manifest, events, layout)
