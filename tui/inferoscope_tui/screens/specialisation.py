"""Specialisation of a run set: per layer, the experts that lean to each source, marked when the
lean beats the document-level permutation null and dimmed when it does not."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from inferoscope import visible
from inferoscope.specialise import ALPHA, Specialisation


def specialisation_text(result: Specialisation, top: int = 4) -> Text:
    """The whole study as one text: a header, then per layer MI and each source's leaning experts.

    A lean that beats the null (adjusted p <= 0.01, max-T over the whole study) is bold and marked
    ``*``; one within the null is dim,
    so a reader never takes chance for a preference."""
    text = Text()
    text.append(f"{result.documents} documents · tokens by source: ", style="bold")
    text.append(", ".join(f"{visible(s, 24)} {n}" for s, n in result.tokens.items()))
    text.append(
        f"\nnull: sources shuffled across documents, {result.permutations} permutations · "
        "lift = share of the expert's selections from the source / the source's share of tokens · "
        "* beats the null (adjusted p <= 0.01, max-T over the study), dim: within it\n",
        style="dim",
    )
    for layer in result.layers:
        beats = layer.beats_null
        text.append(f"\nlayer {layer.layer_index}", style="bold")
        text.append(
            f"  MI {layer.mutual_information:.4f} bits (null p99 {layer.mi_null_p99:.4f}, "
            f"p {layer.mi_p_value:.3f}, adjusted {layer.mi_p_adjusted:.3f})",
            style="" if beats else "dim",
        )
        text.append(" beats the null\n" if beats else " within the null\n", style="bold" if beats else "dim")
        for source, experts in layer.leaning(result.sources, alpha=ALPHA, top=top).items():
            text.append(f"  {visible(source, 16):<16} ")
            if not experts:
                text.append("no expert leans to it", style="dim")
            for number, entry in enumerate(experts):
                if number:
                    text.append("  ")
                label = f"e{entry['expert']} x{entry['lift']:.2f}"
                if entry["beats_null"]:
                    text.append(label + "*", style="bold green")
                else:
                    text.append(label, style="dim")
            text.append("\n")
    return text


class SpecialisationScreen(ModalScreen[None]):
    """Shows a computed study (or the one line saying why it cannot be made); escape goes back."""

    BINDINGS = [Binding("escape,q,p", "close", "Back", id="specialisation.close")]
    DEFAULT_CSS = """
    SpecialisationScreen { background: $background; }
    #special-title { height: 1; }
    #special-scroll { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(Text(" specialisation by source · esc: back", style="bold"), id="special-title")
        with VerticalScroll(id="special-scroll"):
            yield Static(Text("computing (documents shuffled for the null)…", style="dim"), id="special-body")

    def show(self, result: Specialisation | None, problem: str | None) -> None:
        body = self.query_one("#special-body", Static)
        if result is None:
            body.update(Text(f"cannot compare by source: {visible(problem or '', 300)}", style="bold red"))
        else:
            body.update(specialisation_text(result))

    def action_close(self) -> None:
        self.dismiss(None)
