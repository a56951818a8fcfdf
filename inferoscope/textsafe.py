"""Make bundle text safe to show: control characters become visible escapes.

Bundle strings (token_text, prompt, ids, messages quoting them) are data. Before they reach
a terminal, every C0/C1 control character, DEL, line/paragraph separator and bidirectional
override is replaced by a visible escape such as ``\\x1b`` or ``\\u202e``, so no escape
sequence, OSC 52 clipboard write or reordering trick can act on the terminal.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, max_chars: int | None = None) -> str:
    """``text`` with unsafe characters escaped, optionally cut to ``max_chars`` with an ellipsis."""
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
        return _UNSAFE.sub(_escape, text) + "…"
    return _UNSAFE.sub(_escape, text)


def visible_value(value: object, max_chars: int | None = 200) -> str:
    """Any JSON value shown safely; non-strings through their repr."""
    return visible(value if isinstance(value, str) else repr(value), max_chars)
