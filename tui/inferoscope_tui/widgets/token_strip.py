"""The token strip: generated text around the current token, as data (never markup)."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.widgets import Static

from inferoscope import visible

UNREADABLE = "⟨unreadable⟩"
ISSUE_GLYPH = "‼"


def strip_text(
    position: int,
    count: int,
    text_of: Callable[[int], str | None],
    has_issue: Callable[[int], bool],
    prompt: str,
    budget: int,
    wash: Callable[[int], str | None] | None = None,
) -> Text:
    """The strip for ``position``: left context, the current token (reversed), right context."""
    text = Text(no_wrap=False, overflow="fold")
    left_budget = budget // 2
    pieces: list[tuple[int, str]] = []
    used = 0
    cursor = position - 1
    while cursor >= 0 and used < left_budget:
        shown = _shown(text_of(cursor))
        pieces.append((cursor, shown))
        used += len(shown)
        cursor -= 1
    if cursor < 0 and used < left_budget and prompt:
        shown_prompt = visible(prompt)
        room = left_budget - used
        tail = shown_prompt if len(shown_prompt) <= room else "…" + shown_prompt[-(room - 1) :]
        text.append(tail, style="dim")  # a cut prompt starts with an ellipsis, never mid-word unmarked

    def background(index: int) -> str | None:
        return wash(index) if wash is not None else None

    for index, shown in reversed(pieces):
        _append_token(text, index, shown, has_issue(index), current=False, background=background(index))
    if 0 <= position < count:
        shown = _shown(text_of(position))
        here = background(position)
        _append_token(text, position, shown, has_issue(position), current=True, background=here)
    cursor, used = position + 1, 0
    while cursor < count and used < budget - left_budget:
        shown = _shown(text_of(cursor))
        _append_token(text, cursor, shown, has_issue(cursor), current=False, background=background(cursor))
        used += len(shown)
        cursor += 1
    return text


def _shown(token: str | None) -> str:
    if token is None:
        return UNREADABLE
    return visible(token) if token else "∅"


def _append_token(
    text: Text, index: int, shown: str, issue: bool, *, current: bool, background: str | None = None
) -> None:
    style = "reverse bold" if current else ""
    if background is not None:
        style += f" on {background}"
    if issue:
        text.append(ISSUE_GLYPH, style="bold red")
        style += " underline red"
    text.append(shown, style=style.strip() or None)


class TokenStrip(Static):
    """Shows ``strip_text`` for the current token."""
