"""The issues pane: every issue with code, scope, message and location; enter jumps to it."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from inferoscope import ValidationIssue, visible


def issue_label(issue: ValidationIssue) -> Text:
    """Code and location on one line, what is wrong on the next (the pane is half the screen)."""
    text = Text()
    text.append(issue.code, style="bold red")
    where = issue.location.describe()
    text.append(f"  {visible(where or issue.scope, 120)}", style="cyan")
    text.append("\n  ")
    text.append(visible(issue.specific, 300))
    return text


SHOWN_MAX = 1000


class IssuesPane(OptionList):
    """Issues, optionally filtered to one code (``f`` cycles through the codes)."""

    BINDINGS = [Binding("f", "cycle_filter", "Filter code", id="issues.filter")]

    class Jump(Message):
        def __init__(self, issue: ValidationIssue) -> None:
            super().__init__()
            self.issue = issue

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.all_issues: list[ValidationIssue] = []
        self.shown: list[ValidationIssue] = []
        self.code_filter: str | None = None

    def set_issues(self, issues: list[ValidationIssue]) -> None:
        self.all_issues = issues
        self._refill()

    def codes(self) -> list[str]:
        return sorted({issue.code for issue in self.all_issues})

    def action_cycle_filter(self) -> None:
        if not self.all_issues:
            self.notify("no issues to filter: the bundle meets the contract", markup=False)
            return
        codes = [None, *self.codes()]
        self.code_filter = codes[(codes.index(self.code_filter) + 1) % len(codes)]
        self._refill()

    def _refill(self) -> None:
        matching = [i for i in self.all_issues if self.code_filter in (None, i.code)]
        self.shown = matching[:SHOWN_MAX]  # a list of 100,000 options would stall every redraw
        self.clear_options()
        self.add_options([Option(issue_label(issue)) for issue in self.shown])
        if len(matching) > SHOWN_MAX:
            more = Text(
                f"… and {len(matching) - SHOWN_MAX:,} more here (] and [ step through every issue; "
                "inferoscope validate RUN_DIR lists them all)",
                style="dim",
            )
            self.add_option(Option(more, disabled=True))
        if not self.all_issues:
            self.add_option(
                Option(Text("no issues: the bundle meets the contract", style="green"), disabled=True)
            )
        if self.shown:
            self.highlighted = 0  # enter works at once
        suffix = f" · only {visible(self.code_filter, 40)} (f: next code)" if self.code_filter else ""
        hint = " · f filters" if not self.code_filter and len(self.codes()) > 1 else ""
        self.border_title = f"issues {len(matching):,}/{len(self.all_issues):,}{suffix}{hint}"

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if 0 <= event.option_index < len(self.shown):
            self.post_message(self.Jump(self.shown[event.option_index]))
