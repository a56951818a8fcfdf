"""``inferoscope tui RUN_DIR``: step through a run token by token.

The app is a view of RunModel: every key changes (position, cursor, view) and the panes are
redrawn from the model, so the same keys on the same bundle always give the same screen.
Indexing, validation and token texts for search run in a worker thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import Footer, Static

from inferoscope import BundleOpenError, RunBundleError, RunIdError, ValidationIssue, visible
from inferoscope.compare import RunComparison, compare_runs
from inferoscope.routing import Routing
from inferoscope.scramble import MEANING as SCRAMBLE_MEANING
from inferoscope.scramble import VARIANTS as SCRAMBLE_VARIANTS
from inferoscope.scramble import scrambled_twin

from .compare_view import agreement_line, compare_detail, mark_disagreements
from .grid_rows import grid_rows
from .header import Part, fit_header
from .motifs import GLOBAL_COLOURS, NOVEL_GLYPH, motif_detail, strip_wash
from .run_model import EventSlot, RunModel
from .screens.help import HelpScreen
from .screens.message import MessageScreen
from .screens.overview import OverviewScreen, Target
from .screens.prompt import PromptScreen
from .widgets.detail import DetailPane, labelled, layer_detail
from .widgets.expert_grid import PALETTE, PALETTE_16, PALETTE_DETECT, ExpertGrid, GridRow, faded, palette_for
from .widgets.issues_pane import IssuesPane
from .widgets.token_strip import TokenStrip, strip_text

SPEEDS = (1, 2, 4, 8, 16, 32)


class StopWork(Exception):
    """Raised in a background thread when the app is closing, to end the work early."""


class InferoscopeApp(App[None]):
    """The terminal inspector."""

    CSS_PATH = "app.tcss"
    TITLE = "inferoscope"
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", id="app.help"),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("l,right", "step(1)", "Next", id="replay.next"),
        Binding("h,left", "step(-1)", "Prev", id="replay.prev"),
        Binding("g,home", "first", "First", id="replay.first", show=False),
        Binding("G,end", "last", "Last", id="replay.last", show=False),
        Binding("colon", "goto", "Go to", id="replay.goto"),
        Binding("slash", "search", "Search", id="replay.search"),
        Binding("n", "search_next(1)", "Next match", id="replay.match_next", show=False),
        Binding("N", "search_next(-1)", "Previous match", id="replay.match_prev", show=False),
        Binding("right_square_bracket", "issue(1)", "Next issue", id="replay.issue_next"),
        Binding("left_square_bracket", "issue(-1)", "Previous issue", id="replay.issue_prev", show=False),
        Binding("d", "disagree(1)", "Next disagreement (compare)", id="replay.disagree_next", show=False),
        Binding("D", "disagree(-1)", "Previous disagreement", id="replay.disagree_prev", show=False),
        Binding("space", "play", "Play", id="replay.play"),
        Binding("plus,equals_sign", "speed(1)", "Faster", id="replay.faster", show=False),
        Binding("minus", "speed(-1)", "Slower", id="replay.slower", show=False),
        Binding("j", "layer(1)", "Next layer", id="cursor.layer_down", show=False),
        Binding("k", "layer(-1)", "Previous layer", id="cursor.layer_up", show=False),
        Binding("v", "overview", "Run view", id="view.overview"),
        Binding("m", "motifs", "Motifs on/off", id="view.motifs"),
        Binding("s", "scramble", "Scramble", id="view.scramble"),
        Binding("r", "raw", "Raw JSON", id="view.raw"),
        Binding("y", "copy", "Copy event JSON", id="view.copy", show=False),
    ]

    def __init__(
        self, run_dir: Path | str, *, token: int | None = None, compare: Path | str | None = None
    ) -> None:
        _start_resource_tracker()
        super().__init__()
        self.run_dir = Path(run_dir)
        self.open_error: str | None = None
        self.model: RunModel | None = None
        try:
            self.model = RunModel(self.run_dir)
        except BundleOpenError as exc:
            self.open_error = str(exc)
        self.compare_dir = Path(compare) if compare is not None else None
        self.model_b: RunModel | None = None
        self.comparison: RunComparison | None = None
        if self.compare_dir is not None and self.open_error is None:
            try:
                self.model_b = RunModel(self.compare_dir)
            except BundleOpenError as exc:
                self.open_error = f"run B ({self.compare_dir}): {exc}"
        self.position = max(0, token or 0)
        self.wanted_token = token
        self.cursor_layer: int | None = None
        self.cursor_expert: int | None = None
        self.show_raw = False
        self.show_motifs = True
        self.real_model = self.model
        #: the probability palette for this terminal's colour depth (16 colours get their own);
        #: INFEROSCOPE_PALETTE=16|full forces one (screenshots and tests draw headless)
        forced = os.environ.get("INFEROSCOPE_PALETTE", "").strip().lower()
        self.palette = palette_for("standard" if forced == "16" else None if forced == "full" else "detect")
        self.scramble: str | None = None  # None: the real run; else the SCRAMBLED twin's variant
        self.twins: dict[str, RunModel] = {}
        self.playing: Timer | None = None
        self.speed_index = 2
        self.search_query: str | None = None
        self.status = "indexing"
        self.progress_text = ""
        self.stopping = False  # set by quit; background work stops at its next progress report
        self.painted_at: float | None = None  # when token 0 was first on screen (perf_counter)
        self._disagreements: tuple[RunComparison, np.ndarray] | None = None  # (comparison, tokens)

    # -- layout ---------------------------------------------------------------------------
    def _detect_palette(self) -> None:
        """A real terminal's depth decides, unless forced; a headless run keeps the full palette."""
        if self.palette == PALETTE_DETECT:
            self.palette = PALETTE if self.is_headless else palette_for(self.console.color_system)
        if self.palette is PALETTE_16 and not self.is_headless and not self.no_color:
            # send the named colours as they are: converted to RGB and back, they land on other ones
            # (not under NO_COLOR: its grey shades must go through the conversion, or text and
            # background both land on black)
            self.ansi_color = True

    def compose(self) -> ComposeResult:
        self._detect_palette()
        yield Static(id="header")
        yield TokenStrip(id="strip")
        if self.compare_dir is not None:
            yield Static(id="agreement")
            yield Static(id="grid-title")
        yield ExpertGrid(no_color=self.no_color, palette=self.palette, id="grid")
        if self.compare_dir is not None:
            yield Static(id="grid-b-title")
            grid_b = ExpertGrid(no_color=self.no_color, palette=self.palette, id="grid-b")
            grid_b.can_focus = False
            yield grid_b
        with Horizontal(id="bottom"):
            yield DetailPane(id="detail")
            yield IssuesPane(id="issues")
        yield Footer()

    def on_mount(self) -> None:
        model = self.model
        problem_b = self.model_b.fatal_problem if self.model_b is not None else None
        if model is None or model.fatal_problem or problem_b or self.open_error:
            reason = (
                self.open_error or (model.fatal_problem if model else "") or problem_b or "unknown reason"
            )
            b_failed = model is not None and not model.fatal_problem
            where = self.compare_dir if b_failed and self.compare_dir is not None else self.run_dir
            self.push_screen(MessageScreen(f"cannot open run bundle {where}", reason))
            return
        self.query_one("#grid", ExpertGrid).focus()
        if self.position != 0:
            self.position = 0  # until the index says how many events there are
        self.refresh_view()
        # paint token 0 first; the index and validation load behind it
        self.call_after_refresh(self._painted)

    def _painted(self) -> None:
        self.painted_at = time.perf_counter()
        self.run_worker(self._background, thread=True, exclusive=True, name="load")

    def on_resize(self) -> None:
        self._fit_panes()
        self.refresh_header()

    def _fit_panes(self) -> None:
        """Give the grid the rows it needs (all layers when they fit) and the rest below."""
        grid = self.query_one("#grid", ExpertGrid)
        needed = max(3, len(grid.rows) + (1 if grid.virtual_size.width > self.size.width else 0))
        spare = self.size.height - 1 - 2 - needed - 1
        if self.compare_dir is not None:
            spare -= needed + 3  # second grid, two titles and the agreement line
        self.query_one("#bottom").styles.height = max(4, spare)

    # -- background work ------------------------------------------------------------------
    def _background(self) -> None:
        try:
            self._load()
        except StopWork:
            return  # the app is closing: the pass stops at its next progress report

    def _load(self) -> None:
        model = self.model
        assert model is not None
        count = model.build_index(lambda done, total: self._progress("indexing", done, total))
        self.call_from_thread(self._on_indexed, count)
        if model.load_motifs() is not None:
            self.call_from_thread(self.refresh_view)
        model.validate(lambda done, total: self._progress("validating", done, total))
        self.call_from_thread(self._on_validated)
        if self.model_b is not None:
            self.model_b.build_index()
            self.model_b.validate()
            self.call_from_thread(self.refresh_view)
            comparison = compare_runs(model.reader, self.model_b.reader)  # both indexes already built
            self.call_from_thread(self._on_compared, comparison)

    def _on_compared(self, comparison: RunComparison) -> None:
        # the notes (lengths, layers, expert counts) go in the detail pane and the titles: a toast
        # would cover grid B for seconds at 80x24
        self.comparison = comparison
        self.refresh_view()

    async def action_quit(self) -> None:
        """Quit at once: background passes stop at their next progress report instead of finishing."""
        self.stopping = True
        self.exit()

    def _load_texts(self) -> None:
        assert self.model is not None
        self.model.load_token_texts()
        self.call_from_thread(self._on_texts)

    def _progress(self, what: str, done: int, total: int) -> None:
        if self.stopping:
            raise StopWork
        percent = int(100 * done / total) if total else 100
        text = f"{what} {percent}%"
        if text != self.progress_text:
            self.progress_text = text
            self.call_from_thread(self._set_status, what, text)

    def _set_status(self, status: str, text: str) -> None:
        self.status = status
        self.progress_text = text
        self.refresh_header()

    def _on_indexed(self, count: int) -> None:
        self.status = "validating"
        if self.wanted_token is not None:
            self.position = max(0, min(self.wanted_token, count - 1))
        self.refresh_view()

    def _on_validated(self) -> None:
        model = self.model
        assert model is not None and model.report is not None
        self.status = "done"
        self.query_one(IssuesPane).set_issues(model.issue_index.issues)
        self.refresh_view()

    def _on_texts(self) -> None:
        if self.search_query:
            self._search(self.search_query, 1, include_current=True)
        self.refresh_view()

    # -- drawing --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self.model.count if self.model else 0

    def refresh_view(self) -> None:
        model = self.model
        if model is None:
            return
        slot = model.slot(self.position) if self.count else None
        self._draw_grid(slot)
        if self.model_b is not None:
            self._draw_compare()
        self._draw_strip()
        self._draw_detail(slot)
        self.refresh_header()
        self._fit_panes()

    def refresh_header(self) -> None:
        model = self.model
        if model is None:
            return
        header = self.query_one("#header", Static)
        width = max(10, self.size.width - 2)  # the header spans the screen, one column of padding each side
        header.update(fit_header(self.header_parts(), width))

    def header_parts(self) -> list[Part]:
        """The header's segments with their priorities (see ``header.fit_header``)."""
        model = self.model
        assert model is not None
        parts: list[Part] = []
        if self.scramble is not None:
            parts.append(Part(self.scramble_label(), 2))
        parts.append(Part(Text(visible(model.field("run_id")), style="bold"), 7, shrink_to=12))
        if self.scramble is None:  # the twin's run_id already names its source
            parts.append(Part(Text(visible(model.field("model_id"))), 8, shrink_to=8))
        parts.append(Part(Text(self.position_label()), 1))
        motifs = model.motifs_at(self.position) if self.show_motifs and self.count else None
        if motifs is not None and motifs.global_motif is not None and model.motifs is not None:
            mark = motifs.global_motif
            wash = faded(mark.colour(GLOBAL_COLOURS), model.motifs.strength(mark))
            chip = Text(
                f" {visible(mark.motif_id, 16)} ",
                style="bold" if self.no_color else f"bold #000000 on {wash}",
            )
            if mark.novel:
                chip.append(NOVEL_GLYPH, style="bold")
            parts.append(Part(chip, 5))
        parts.append(Part(self._validation_state(), 0))
        speed = SPEEDS[self.speed_index]
        if self.playing is not None:
            parts.append(Part(Text(f"▶ {speed} tok/s", style="bold green"), 3))
        else:
            parts.append(Part(Text(f"paused {speed} tok/s", style="dim"), 3))
        if self.search_query:
            parts.append(Part(Text("/" + visible(self.search_query)), 6, shrink_to=6))
        if self.model_b is not None and self.model_b.count_known and self.model_b.count != self.count:
            parts.append(Part(Text(f"B has {self.model_b.count} tokens", style="bold red"), 4))
        return parts

    def position_label(self) -> str:
        """``token #i of N``: i is the token_index as stored (from 0), N how many there are."""
        model = self.model
        total = str(self.count) if model is not None and model.count_known else "…"
        return f"token #{self.position} of {total}"

    def _validation_state(self) -> Text:
        model = self.model
        if model is None or model.report is None:
            return Text(self.progress_text or self.status, style="yellow")
        total = model.report.total
        if total == 0:
            return Text("clean", style="bold green")
        return Text(f"{total} issue{'s' if total != 1 else ''}", style="bold red")

    def _rows_for(self, slot: EventSlot | None, model: RunModel | None = None) -> list[GridRow]:
        model = model or self.model
        assert model is not None
        return grid_rows(model, slot, self.position, show_motifs=self.show_motifs)

    def _draw_grid(self, slot: EventSlot | None) -> None:
        grid = self.query_one("#grid", ExpertGrid)
        rows = self._rows_for(slot)
        grid.set_rows(rows)
        row_number = next((n for n, r in enumerate(rows) if r.layer_index == self.cursor_layer), 0)
        column = grid.cursor_column
        if rows and self.cursor_expert is not None and self.cursor_expert in rows[row_number].order:
            column = rows[row_number].order.index(self.cursor_expert)
        grid.cursor_row, grid.cursor_column = row_number, column
        self._remember_cursor(grid)
        grid.refresh()

    def _draw_compare(self) -> None:
        """Grid B under grid A, both with their disagreements marked, and the agreement line."""
        model, model_b = self.model, self.model_b
        assert model is not None and model_b is not None
        grid_a, grid_b = self.query_one("#grid", ExpertGrid), self.query_one("#grid-b", ExpertGrid)
        inside_b = self.position < model_b.count
        if inside_b:
            rows_b = self._rows_for(model_b.slot(self.position), model_b)
            mark_disagreements(grid_a.rows, rows_b)
        else:  # B is simply shorter: say so on every row, not "unreadable"
            ended = f"run B has no token #{self.position}: it ends at #{model_b.count - 1}"
            rows_b = [GridRow(row.layer_index, [], None, note=ended) for row in grid_a.rows]
        grid_b.set_rows(rows_b)
        grid_b.cursor_row = min(grid_a.cursor_row, max(0, len(rows_b) - 1))
        grid_b.cursor_column = grid_a.cursor_column
        grid_a.refresh()
        grid_b.refresh()
        title_a = Text(no_wrap=True, overflow="ellipsis")
        title_a.append("A ", style="bold reverse")
        title_a.append(" " + visible(model.field("run_id"), 40), style="bold")
        title_a.append(
            "  ≠ top-1 differs · ~ top-k differs · ↕ same set, other order · struck: in one top-k only",
            style="dim",
        )
        self.query_one("#grid-title", Static).update(title_a)
        title_b = Text(no_wrap=True, overflow="ellipsis")
        title_b.append("B ", style="bold reverse")
        title_b.append(" " + visible(model_b.field("run_id"), 40), style="bold")
        title_b.append(" · ")
        if model_b.report is None:
            title_b.append("validating", style="yellow")
        elif model_b.report.total == 0:
            title_b.append("clean", style="bold green")
        else:
            total = model_b.report.total
            title_b.append(
                f"{total} issue{'s' if total != 1 else ''} (see inferoscope validate)", style="bold red"
            )
        if not inside_b:
            title_b.append(f"  run B ends at token {model_b.count - 1}", style="bold red")
        self.query_one("#grid-b-title", Static).update(title_b)
        width = max(20, (self.size.width or 80) - 2)
        line = agreement_line(self.comparison, self.position, width)
        self.query_one("#agreement", Static).update(line)

    def _remember_cursor(self, grid: ExpertGrid) -> None:
        if grid.rows:
            row = grid.rows[grid.cursor_row]
            self.cursor_layer = row.layer_index
            order = row.order
            self.cursor_expert = order[grid.cursor_column] if grid.cursor_column < len(order) else None

    def _draw_strip(self) -> None:
        model = self.model
        assert model is not None
        width = max(20, self.size.width or 80)
        text = strip_text(
            self.position,
            self.count,
            model.token_text,
            lambda p: bool(model.issue_index.by_position.get(p)),
            model.prompt_text,
            budget=width * 2 - 8,
            wash=self._strip_wash if self.show_motifs and model.motifs and not self.no_color else None,
        )
        if self.scramble is not None:
            text = Text.assemble(self.scramble_label(), " ", text)
        self.query_one(TokenStrip).update(text)

    def _strip_wash(self, position: int) -> str | None:
        assert self.model is not None and self.model.motifs is not None
        return strip_wash(self.model.motifs, position)

    def _draw_detail(self, slot: EventSlot | None) -> None:
        detail = self.query_one(DetailPane)
        model = self.model
        assert model is not None
        if slot is None:
            detail.show(Text("this run has no events", style="italic"))
            return
        if self.show_raw:
            raw = Text("raw_trace.ndjson, as stored:\n", style="dim")
            raw.append(visible(slot.raw.decode("utf-8", "replace")) if slot.raw else "(no bytes)")
            motifs = model.motifs_at(self.position)
            if motifs is not None:
                raw.append("\nderived.ndjson (provisional), as stored:\n", style="dim")
                raw.append(visible(motifs.raw.decode("utf-8", "replace")))
            detail.show(raw)
            return
        if slot.token is None:
            text = Text("unreadable event\n", style="bold red")
            text.append(visible(slot.error or "", 500))
            detail.show(text)
            return
        layer = slot.layer(self.cursor_layer)
        messages = [
            i.specific
            for i in model.issue_index.at(self.position)
            if i.location.layer_index in (None, self.cursor_layer)
        ]
        token = Text()
        if self.scramble is not None:
            token.append_text(self.scramble_label())
            token.append(f" {SCRAMBLE_MEANING[self.scramble]}: not the model's routing\n", style="bold")
        token_id = -1 if slot.token.token_id is None else slot.token.token_id
        context = -1 if slot.token.context_length is None else slot.token.context_length
        shown = Text(f'"{visible(slot.token_text or "", 40)}"', style="bold")  # quoted: spaces show
        shown.append(f"  id {token_id} · ctx {context}", style="dim")
        labelled(token, f"#{self.position}", shown)
        if self.model_b is not None:
            token.append_text(compare_detail(self.model_b, slot, layer, self.cursor_layer, self.comparison))
            for note in self.comparison.notes if self.comparison is not None else []:
                labelled(token, "note", Text(visible(note, 200), style="yellow"))
        if self.show_motifs and model.motifs is not None:
            token.append_text(
                motif_detail(model.motifs, model.motifs_at(self.position), self.cursor_layer or 0)
            )
        grid = self.query_one("#grid", ExpertGrid)
        packing = grid.packing
        cell = grid.cursor_group() if packing.packed else None
        width = max(20, detail.content_region.width or self.size.width // 2 - 2)
        token.append_text(layer_detail(layer, self.cursor_expert, messages, cell, width))
        detail.show(token)

    # -- events from panes ----------------------------------------------------------------
    def on_expert_grid_cursor_moved(self, message: ExpertGrid.CursorMoved) -> None:
        self._remember_cursor(self.query_one("#grid", ExpertGrid))
        if self.model_b is not None:
            self._draw_compare()
        if self.model and self.count:
            self._draw_detail(self.model.slot(self.position))

    def on_issues_pane_jump(self, message: IssuesPane.Jump) -> None:
        self.jump_to_issue(message.issue)

    def jump_to_issue(self, issue: ValidationIssue) -> None:
        model = self.model
        assert model is not None
        lines = model.reader.build_index().numbers if model.count_known else None
        position = model._position_of(issue, lines)
        if position is not None:
            self.position = position
        if issue.location.layer_index is not None:
            self.cursor_layer = issue.location.layer_index
        if issue.location.expert_index is not None:
            self.cursor_expert = issue.location.expert_index
        self.refresh_view()
        self.query_one("#grid", ExpertGrid).focus()

    # -- actions --------------------------------------------------------------------------
    def go_to(self, position: int) -> None:
        if self.count == 0:
            return
        self.position = max(0, min(position, self.count - 1))
        self.refresh_view()

    def action_step(self, delta: int) -> None:
        self.go_to(self.position + delta)

    def action_first(self) -> None:
        self.go_to(0)

    def action_last(self) -> None:
        self.go_to(self.count - 1)

    def action_layer(self, delta: int) -> None:
        self.query_one("#grid", ExpertGrid).action_layer(delta)

    def action_goto(self) -> None:
        def done(value: str | None) -> None:
            if value is not None and value.strip().lstrip("-").isdigit():
                wanted = int(value.strip())
                self.go_to(wanted)
                if wanted != self.position:
                    self.notify(
                        f"there is no token #{wanted}: went to #{self.position} (tokens are #0 to "
                        f"#{max(0, self.count - 1)})",
                        severity="warning",
                        markup=False,
                    )
            elif value:
                self.notify(f"not a token index: {visible(value, 40)}", severity="warning", markup=False)

        self.push_screen(PromptScreen(f"go to token (0–{max(0, self.count - 1)}):"), done)

    def action_search(self) -> None:
        def done(value: str | None) -> None:
            if value:
                self.search_query = value
                self._search(value, 1, include_current=True)

        self.push_screen(PromptScreen("search token text:"), done)

    def action_search_next(self, direction: int) -> None:
        if self.search_query:
            self._search(self.search_query, direction, include_current=False)

    def _search(self, query: str, direction: int, *, include_current: bool) -> None:
        model = self.model
        if model is None:
            return
        if model.token_texts is None:
            self.notify("reading every token's text for the search…", markup=False)
            self.run_worker(self._load_texts, thread=True, exclusive=True, group="texts")
            return
        wanted = query.casefold()
        count = len(model.token_texts)
        for step in range(0 if include_current else 1, count + 1):
            position = (self.position + direction * step) % count
            text = model.token_texts[position]
            if text is not None and wanted in text.casefold():
                self.go_to(position)
                return
        self.notify(f"no token contains {visible(query, 40)!r}", severity="warning", markup=False)
        self.refresh_header()

    def action_issue(self, direction: int) -> None:
        model = self.model
        if model is None:
            return
        positions = model.issue_index.positions()
        ahead = [p for p in positions if (p > self.position if direction > 0 else p < self.position)]
        if not ahead:
            self.notify("no more tokens with issues in that direction", markup=False)
            return
        self.go_to(ahead[0] if direction > 0 else ahead[-1])

    def action_disagree(self, direction: int) -> None:
        """Compare mode: the next (previous) token where the runs chose other experts or another
        order at any layer."""
        comparison = self.comparison
        if comparison is None:
            waiting = self.model_b is not None
            self.notify(
                "comparing…" if waiting else "d works in compare mode (--compare RUN_B)", markup=False
            )
            return
        if self._disagreements is None or self._disagreements[0] is not comparison:
            with np.errstate(invalid="ignore"):
                differs = (comparison.same_set == 0) | (comparison.same_order == 0)
            self._disagreements = (comparison, np.flatnonzero(differs.any(axis=1)))
        positions = self._disagreements[1]
        if direction > 0:
            at = int(np.searchsorted(positions, self.position, side="right"))
            target = int(positions[at]) if at < positions.size else None
        else:
            at = int(np.searchsorted(positions, self.position, side="left")) - 1
            target = int(positions[at]) if at >= 0 else None
        if target is None:
            self.notify("the runs agree on every token in that direction", markup=False)
            return
        self.go_to(target)

    def action_play(self) -> None:
        if self.playing is not None:
            self.playing.stop()
            self.playing = None
        else:
            self.playing = self.set_interval(1 / SPEEDS[self.speed_index], self._tick)
        self.refresh_header()

    def _tick(self) -> None:
        if self.position >= self.count - 1:
            self.action_play()
            return
        self.action_step(1)

    def action_speed(self, delta: int) -> None:
        self.speed_index = max(0, min(len(SPEEDS) - 1, self.speed_index + delta))
        if self.playing is not None:
            self.playing.stop()
            self.playing = self.set_interval(1 / SPEEDS[self.speed_index], self._tick)
        self.refresh_header()

    def scramble_label(self) -> Text:
        style = "bold reverse" if self.no_color else "bold #ffffff on #af0000"
        return Text(f" SCRAMBLED: {self.scramble} ", style=style)

    def action_scramble(self) -> None:
        """Cycle real → SCRAMBLED tokens → SCRAMBLED experts → real; twins are built once."""
        if self.model_b is not None:
            self.notify(
                "scramble mode is for one run; `inferoscope derive RUN --scramble tokens --out DIR` writes "
                "a twin to open with --compare",
                markup=False,
            )
            return
        if self.real_model is None:
            return
        variants: list[str | None] = [None, *SCRAMBLE_VARIANTS]
        wanted = variants[(variants.index(self.scramble) + 1) % len(variants)]
        if wanted is None:
            self._use_model(self.real_model, None)
            return
        cached = self.twins.get(wanted)
        if cached is not None:
            self._use_model(cached, wanted)
            return
        self.notify(f"building the SCRAMBLED ({wanted}) twin of this run…", markup=False)
        self.run_worker(lambda: self._build_twin(wanted), thread=True, group="scramble", exclusive=True)

    def _build_twin(self, variant: str) -> None:
        try:
            folder = scrambled_twin(self.run_dir, variant)
            twin = RunModel(folder)
            twin.build_index()
            twin.load_motifs()
            twin.validate()
        except (RunBundleError, BundleOpenError, RunIdError, OSError, ValueError) as exc:
            message = f"cannot scramble this run: {visible(str(exc), 300)}"
            self.call_from_thread(self.notify, message, severity="error", markup=False)
            return
        self.call_from_thread(self._twin_ready, twin, variant)

    def _twin_ready(self, twin: RunModel, variant: str) -> None:
        self.twins[variant] = twin
        self._use_model(twin, variant)

    def _use_model(self, model: RunModel, variant: str | None) -> None:
        self.model = model
        self.scramble = variant
        if model.report is not None:
            self.query_one(IssuesPane).set_issues(model.issue_index.issues)
        self.position = max(0, min(self.position, self.count - 1))
        if variant is not None:
            self.notify(f"SCRAMBLED ({variant}): {SCRAMBLE_MEANING[variant]}", markup=False, timeout=3)
        else:
            self.notify("back to the real run", markup=False, timeout=2)
        self.refresh_view()

    def action_motifs(self) -> None:
        model = self.model
        if model is not None and model.motifs is None:
            self.notify("no derived motifs here; `inferoscope derive RUN_DIR` writes them", markup=False)
            return
        self.show_motifs = not self.show_motifs
        self.refresh_view()

    def action_raw(self) -> None:
        self.show_raw = not self.show_raw
        self.refresh_view()

    def action_copy(self) -> None:
        if self.model and self.count:
            raw = self.model.slot(self.position).raw
            self.copy_to_clipboard(raw.decode("utf-8", "replace"))
            self.notify(f"copied event {self.position} ({len(raw)} bytes) to the clipboard", markup=False)

    def action_overview(self) -> None:
        model = self.model
        if model is None:
            return
        if model.overview is None:
            self.notify(
                f"run-level views fill in when the streaming pass ends ({self.progress_text or self.status})",
                markup=False,
            )
            return
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append("RUN VIEW ", style="bold reverse")
        title.append(" ")
        if self.scramble is not None:
            title.append_text(self.scramble_label())
            title.append(" ")
        title.append(visible(model.field("run_id"), 40), style="bold")
        title.append(f" · {self.count} tokens · {len(model.overview)} MoE layers")
        screen = OverviewScreen(
            model.overview,
            title=title,
            orders=model.grid_orders,
            text_of=model.quick_text,
            position=self.position,
            layer_index=self.cursor_layer,
            no_color=self.no_color,
            scrambled=self.scramble,
            palette=self.palette,
            entropy_of=_entropy_of(model.reader.routing),
        )

        def back(target: Target | None) -> None:
            if target is None:
                return
            self.cursor_layer = target.layer_index
            if target.expert is not None:
                self.cursor_expert = target.expert
            self.go_to(target.position)

        self.push_screen(screen, back)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows()))

    def help_rows(self) -> list[tuple[str, str]]:
        """Every live binding (focused pane, screen, app), one row per action; replay keys first."""
        rows: dict[str, tuple[str, str, int]] = {}
        own = [binding.id for binding in self.BINDINGS if isinstance(binding, Binding)]
        for active in self.screen.active_bindings.values():
            binding = active.binding
            display = self.get_key_display(binding)
            label = binding.description or binding.action
            rank = own.index(binding.id) if binding.id in own else len(own)
            if label in rows:
                rows[label] = (f"{rows[label][0]} {display}", label, min(rank, rows[label][2]))
            else:
                rows[label] = (display, label, rank)
        ordered = sorted(rows.values(), key=lambda row: row[2])
        return [(keys, label) for keys, label, _rank in ordered]


def _start_resource_tracker() -> None:
    """Start multiprocessing's helper while stdio is still the terminal's.

    Validation of a large run uses a worker process; once Textual has replaced stderr, the
    helper could no longer be started and validation would run on one core only.
    """
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except (OSError, ValueError):
        pass


def run_app(run_dir: Path | str, token: int | None = None, compare: Path | str | None = None) -> int:
    """Run the app in this terminal; the exit code is 1 when the bundle cannot be opened.

    A run-set folder opens the list of its runs first; quitting a run comes back to the list."""
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    from inferoscope.runset import run_set

    runs = run_set(run_dir) if compare is None else None
    if runs:
        from .run_set import RunSetApp

        cursor = 0
        while True:
            chosen = RunSetApp(run_dir, runs, cursor).run()
            if chosen is None:
                return 0
            cursor = runs.index(chosen)
            InferoscopeApp(chosen, token=token).run()
    app = InferoscopeApp(run_dir, token=token, compare=compare)
    app.run()
    return app.return_code or 0


def _entropy_of(routing: Routing | None) -> str:
    """For the run view: what a v0.2 run's entropy is of when its scores are not probabilities."""
    functions = {group.score_function for group in routing.groups} if routing is not None else set()
    if functions & {"sigmoid", "sqrt_softplus"}:
        return "score share (score ÷ sum)"
    if "logits" in functions:
        return "softmax(logits)"
    return ""
