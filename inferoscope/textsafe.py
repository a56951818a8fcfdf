"""Make bundle text safe to show: control characters become visible escapes.

Bundle strings (token_text, prompt, ids, messages quoting them) are data. Before they reach
a terminal, every C0/C1 control character, DEL, line/paragraph separator, bidirectional
control (U+061C, U+200E/F, U+202A-E, U+2066-9), zero-width character (U+200B-D, U+2060-4,
U+FEFF) and lone surrogate (U+D800-DFFF, valid JSON but not Unicode text) is replaced by a
visible escape such as ``\\x1b`` or ``\\u202e``, so no escape sequence, OSC 52 clipboard
write, reordering trick or unencodable character can act on the terminal or break its output.
A run of combining marks keeps its first two; the rest are escaped, so a token cannot stack
hundreds of marks and shift the columns of a pane.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = "\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_SURROGATE = "\ud800-\udfff"
_SURROGATES = re.compile(f"[{_SURROGATE}]")
_COMBINING = (
    "\u0300-\u036f\u0483-\u0489\u0591-\u05bd\u0610-\u061a\u064b-\u065f"
    "\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
)
_MARKS_KEPT = 2
#: one piece of text: an unsafe character, a run of combining marks, or a run of safe characters
_PIECE = re.compile(f"([{_CONTROL}{_SURROGATE}])|([{_COMBINING}]+)|([^{_CONTROL}{_SURROGATE}{_COMBINING}]+)")


def _code(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _pieces(text: str) -> list[str]:
    """``text`` as shown, piece by piece (an escape is never split)."""
    out: list[str] = []
    for match in _PIECE.finditer(text):
        unsafe, marks, safe = match.groups()
        if unsafe is not None:
            out.append(_code(unsafe))
        elif marks is not None:
            out.append(marks[:_MARKS_KEPT])
            out.extend(_code(mark) for mark in marks[_MARKS_KEPT:])
        else:
            out.append(safe)
    return out


def visible(text: str, max_chars: int | None = None) -> str:
    """``text`` with unsafe characters escaped; cut to ``max_chars`` shown characters with ``…``.

    The cut counts what is shown (an escape is four to six characters), so 40 ESC characters
    never become 160 columns, and it never splits an escape.
    """
    if max_chars is None:
        return "".join(_pieces(text))
    shown: list[str] = []
    used = 0
    for piece in _pieces(text[: max_chars + 1]):
        if used + len(piece) > max_chars:
            if not piece.startswith("\\") or len(piece) > 6:  # plain text may be cut; an escape may not
                shown.append(piece[: max_chars - used])
            return "".join(shown) + "…"
        shown.append(piece)
        used += len(piece)
    return "".join(shown) + ("…" if len(text) > max_chars else "")


def visible_value(value: object, max_chars: int | None = 200) -> str:
    """Any JSON value shown safely; non-strings through their repr."""
    return visible(value if isinstance(value, str) else repr(value), max_chars)


def without_surrogates(text: str) -> str:
    """``text`` as valid Unicode: each lone surrogate written as its escape (``\\ud800``)."""
    if text.isascii():  # most text, and it holds no surrogate: one C call, not a search
        return text
    return _SURROGATES.sub(lambda m: _code(m.group(0)), text)
