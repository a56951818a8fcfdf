"""Help generated from the live bindings, so it never drifts from what the keys do."""

from __future__ import annotations

import itertools

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close help", id="help.close")]

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 1), expand=True)
        for _ in range(2):
            table.add_column(style="bold", no_wrap=True)
            table.add_column(ratio=1)
        half = (len(self.rows) + 1) // 2
        for left, right in itertools.zip_longest(self.rows[:half], self.rows[half:]):
            cells = [Text(left[0]), Text(left[1])]
            cells += [Text(right[0]), Text(right[1])] if right else [Text(), Text()]
            table.add_row(*cells)
        legend = Text()
        legend.append("\ngrid: ", style="bold")
        legend.append(
            "one row per MoE layer (index, normalised entropy), experts in layout order; "
            "colour = router probability x experts (multiples of uniform): <0.5 <1 <2 <4 <8 >=8 "
            "(without colour: ' .:-=#'); digits = top-k rank; ! = layer with an issue; "
            "underline = expert with an issue."
        )
        legend.append("\nmotifs (provisional, from derived.ndjson): ", style="bold")
        legend.append(
            "header chip and strip background = global motif; bar after the layer's marks = layer motif; "
            "a faded or thin bar (╎) = weak fit; ✦ = the token founded the motif (novelty is never a "
            "colour); m hides them, r shows the stored derived line."
        )
        legend.append("\ncompare (--compare RUN_B): ", style="bold")
        legend.append(
            "≠ top-1 differs, ~ only the top-k set differs, ↕ the same set in another order, ? not "
            "comparable; struck cells are in one "
            "run's top-k only; A↔B line = mean top-k Jaccard per token."
        )
        legend.append("\nscramble (s): ", style="bold")
        legend.append(
            "a null model from this run (routing shuffled across tokens per layer, or expert labels "
            "permuted per token), labelled SCRAMBLED; v: run view (enter drills to the tokens)."
        )
        with VerticalScroll(id="help-body"):
            yield Static(Group(Text("inferoscope keys", style="bold"), table, legend))

    def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(None)
