"""The tokens behind a run-level number: a list to pick one from and jump to, a page at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

PAGE = 200


class DrillScreen(ModalScreen[int | None]):
    """Every token position of ``positions``, ``PAGE`` at a time (labels made per page).

    enter returns the position under the cursor; ``]`` / ``[`` turn pages; escape returns None.
    """

    BINDINGS = [
        Binding("escape,q", "close", "Back", id="drill.close"),
        Binding("right_square_bracket", "page(1)", "Next page", id="drill.page_next"),
        Binding("left_square_bracket", "page(-1)", "Previous page", id="drill.page_prev"),
    ]

    def __init__(self, title: str, positions: Sequence[int], label: Callable[[int], Text]) -> None:
        super().__init__()
        self.title_text = title
        self.positions = [int(p) for p in positions]
        self.label = label
        self.page = 0

    @property
    def total(self) -> int:
        return len(self.positions)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE))

    @property
    def rows(self) -> list[tuple[int, Text]]:
        """The (position, label) rows of the page on screen."""
        start = self.page * PAGE
        return [(p, self.label(p)) for p in self.positions[start : start + PAGE]]

    def compose(self) -> ComposeResult:
        yield Static(id="drill-title")
        yield OptionList(id="drill-list")
        yield Static(Text("enter: go to the token · ] [: pages · esc: back", style="dim"), id="drill-keys")

    def on_mount(self) -> None:
        self._fill()
        self.query_one(OptionList).focus()

    def _fill(self) -> None:
        start = self.page * PAGE
        shown = self.positions[start : start + PAGE]
        title = Text(f"{self.title_text} · {self.total} token{'s' if self.total != 1 else ''}", style="bold")
        if self.pages > 1:
            title.append(f" · {start + 1}–{start + len(shown)} (page {self.page + 1}/{self.pages})")
        self.query_one("#drill-title", Static).update(title)
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(self.label(p)) for p in shown])
        if not shown:
            options.add_option(Option(Text("no tokens", style="italic"), disabled=True))
        options.highlighted = 0 if shown else None

    def action_page(self, delta: int) -> None:
        page = max(0, min(self.pages - 1, self.page + delta))
        if page != self.page:
            self.page = page
            self._fill()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        index = self.page * PAGE + event.option_index
        if 0 <= event.option_index < PAGE and index < self.total:
            self.dismiss(self.positions[index])

    def action_close(self) -> None:
        self.dismiss(None)
