"""The tokens behind a run-level number: a list to pick one from and jump to."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

MAX_ROWS = 2000


class DrillScreen(ModalScreen[int | None]):
    """``rows`` are (token position, label); enter returns the position, escape returns None."""

    BINDINGS = [Binding("escape,q", "close", "Back", id="drill.close")]

    def __init__(self, title: str, rows: list[tuple[int, Text]], total: int) -> None:
        super().__init__()
        self.title_text = title
        self.rows = rows[:MAX_ROWS]
        self.total = total

    def compose(self) -> ComposeResult:
        shown = len(self.rows)
        more = f" (first {shown} shown)" if self.total > shown else ""
        yield Static(
            Text(
                f"{self.title_text} · {self.total} token{'s' if self.total != 1 else ''}{more}", style="bold"
            ),
            id="drill-title",
        )
        options = OptionList(*[Option(label) for _position, label in self.rows], id="drill-list")
        if not self.rows:
            options.add_option(Option(Text("no tokens", style="italic"), disabled=True))
        yield options
        yield Static(Text("enter: go to the token · esc: back", style="dim"), id="drill-keys")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if 0 <= event.option_index < len(self.rows):
            self.dismiss(self.rows[event.option_index][0])

    def action_close(self) -> None:
        self.dismiss(None)
