"""Shown instead of the replay when a bundle cannot be read at all; the app exits with 1."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from inferoscope import visible


class MessageScreen(Screen[None]):
    BINDINGS = [Binding("q,escape,enter", "leave", "Quit", id="message.quit")]

    def __init__(self, title: str, detail: str) -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail

    def compose(self) -> ComposeResult:
        body = Text()
        body.append(visible(self.title_text) + "\n\n", style="bold red")
        body.append(visible(self.detail, 2000) + "\n\n")
        body.append("press q to quit", style="dim")
        yield Static(body, id="message-body")

    def action_leave(self) -> None:
        self.app.exit(return_code=1)
