"""Provisional motifs as the app shows them (the files are read by ``inferoscope.motif_reader``).

Two colour vocabularies keep global and per-layer motifs apart from each other and from the
probability palette; the fit decides how strongly a colour is drawn, and novelty is a glyph,
never a colour.
"""

from __future__ import annotations

from rich.text import Text

from inferoscope import visible
from inferoscope.motif_reader import MotifIndex, MotifMark, TokenMotifs
from inferoscope.motif_reader import read_motifs as load_motifs

from .widgets.detail import labelled
from .widgets.expert_grid import faded

#: global motifs: warm and pastel hues (the probability palette is navy-to-blue then orange/yellow)
GLOBAL_COLOURS = ("#d75f87", "#87d75f", "#af87ff", "#5fd7af", "#ff875f", "#d7d75f", "#5fafff", "#ff5fd7")
#: layer motifs: a second, distinct set
LAYER_COLOURS = ("#00d7d7", "#d7af00", "#af5fd7", "#5fd700", "#d75f00", "#0087ff", "#d70087", "#87afaf")
NOVEL_GLYPH = "✦"

__all__ = ["MotifIndex", "MotifMark", "TokenMotifs", "load_motifs"]


def strip_wash(index: MotifIndex, position: int) -> str | None:
    """The strip background of token ``position``: its global motif colour, faded by fit."""
    motifs = index.by_token.get(position)
    if motifs is None or motifs.global_motif is None:
        return None
    mark = motifs.global_motif
    return faded(mark.colour(GLOBAL_COLOURS), 0.45 * index.strength(mark))


def motif_detail(index: MotifIndex, motifs: TokenMotifs | None, layer_index: int) -> Text:
    """The numbers behind the motif colours, a labelled line each: id, novelty, size, fit, matcher."""
    text = Text()
    if motifs is None:
        return text
    for label, mark in (
        ("global", motifs.global_motif),
        (f"L{layer_index} motif", motifs.layers.get(layer_index)),
    ):
        if mark is None:
            continue
        size = index.counts.get(mark.motif_id)
        line = Text(visible(mark.motif_id, 20), style="bold")
        if mark.novel:
            line.append(f" {NOVEL_GLYPH}new", style="bold")
        line.append(f" {size} tok" if size is not None else "")
        line.append(" fit not recorded" if mark.fit is None else f" fit {mark.fit:.3f}")
        labelled(text, label, line)
    labelled(text, "matcher", Text(visible(index.config_id, 40), style="dim"))
    labelled(text, "", Text("provisional (derived)", style="dim"))
    return text
