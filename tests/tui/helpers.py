"""Helpers for driving the app: open it on a bundle, read what the panes show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Static

from inferoscope_tui import InferoscopeApp
from inferoscope_tui.widgets.detail import DetailPane
from inferoscope_tui.widgets.expert_grid import ExpertGrid

from ..conftest import make_bundle_parts, write_raw_bundle

HOSTILE_TEXTS = ["[bold red]x[/]", "\x1b[2J", "\x1b]52;c;SGVsbG8=\x07", "two\nlines", "tab\there", " ok"]


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
