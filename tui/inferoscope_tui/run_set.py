"""The run-set overview: every run of a folder with its size, validation state and source; enter
opens one in the inspector, and quitting the inspector comes back here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from inferoscope import visible
from inferoscope.runset import RunRow, run_rows
from inferoscope.specialise import Specialisation

from .screens.specialisation import SpecialisationScreen


class RunTable(DataTable[Any]):
    """The table of runs; its enter (select the row) is shown in the footer as Open."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", id="runset.open_row")]


class RunSetApp(App[Path | None]):
    """Lists the runs (validated in a worker, row by row); returns the one chosen, or None."""

    TITLE = "inferoscope"
    BINDINGS = [
        Binding("enter", "open", "Open", id="runset.open"),
        Binding("p", "specialisation", "Specialisation", id="runset.specialisation"),
        Binding("q,escape", "quit_list", "Quit", id="runset.quit"),
    ]

    CSS = """
    #runset-title { height: 1; }
    #runs { height: 1fr; }
    """

    def __init__(self, folder: Path | str, runs: list[Path], cursor: int = 0) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.runs = runs
        self.start_row = cursor
        self.rows: list[RunRow | None] = [None] * len(runs)
        self.done = False
        self.study: Specialisation | None = None
        self.study_problem: str | None = None
        self.study_done = False

    def compose(self) -> ComposeResult:
        yield Static(id="runset-title")
        yield RunTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        # 64 cells of content + 2 of padding per column: the whole row fits 80 columns
        widths = {"run": 11, "ver": 5, "kind": 14, "source": 10, "tokens": 7, "MiB": 6, "validation": 11}
        for header, width in widths.items():
            table.add_column(header, key=header, width=width)
        for path in self.runs:
            table.add_row(Text(visible(path.name, 11)), "…", "…", "…", "…", "…", "checking…", key=str(path))
        if self.runs:
            table.move_cursor(row=min(self.start_row, len(self.runs) - 1))
        self._title()
        self.run_worker(self._check_all, thread=True, exclusive=True)

    def _title(self) -> None:
        checked = sum(row is not None for row in self.rows)
        clean = sum(1 for row in self.rows if row is not None and row.ok)
        text = Text(f" run set {visible(str(self.folder), 40)} · {len(self.runs)} runs", style="bold")
        text.append(f" · {checked} checked · {clean} clean", style="dim")
        self.query_one("#runset-title", Static).update(text)

    def _check_all(self) -> None:
        for number, path in enumerate(self.runs):
            (row,) = run_rows([path])
            self.call_from_thread(self._show, number, row)
        self.done = True

    def _show(self, number: int, row: RunRow) -> None:
        self.rows[number] = row
        table = self.query_one(DataTable)
        state = "unreadable" if row.ok is None else "clean" if row.ok else f"{row.issues} issue(s)"
        values: dict[str, Any] = {
            "ver": row.contract,
            "kind": row.kind or "—",
            "source": Text(visible(row.source or "—", 10)),
            "tokens": str(row.tokens),
            "MiB": f"{row.size_bytes / 2**20:.2f}",
            "validation": Text(state, style="green" if row.ok else "bold red"),
        }
        for column, value in values.items():
            table.update_cell(str(row.path), column, value)
        self._title()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a row (the table takes the key first): open that run."""
        self.exit(self.runs[event.cursor_row])

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if self.runs:
            self.exit(self.runs[table.cursor_row])

    def action_quit_list(self) -> None:
        self.exit(None)

    def action_specialisation(self) -> None:
        """Which experts lean to which source (computed once, in a worker, then kept)."""
        screen = SpecialisationScreen()
        self.push_screen(screen)
        if self.study_done:
            screen.call_after_refresh(screen.show, self.study, self.study_problem)
        else:
            self.run_worker(lambda: self._study(screen), thread=True, group="specialisation")

    def _study(self, screen: SpecialisationScreen) -> None:
        from inferoscope.specialise import specialise

        try:
            self.study = specialise(self.runs)
        except (OSError, ValueError) as error:  # SpecialiseError and RunBundleError are ValueErrors
            self.study_problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.study_done = True
        self.call_from_thread(screen.show, self.study, self.study_problem)
