"""The derived events' NDJSON lines of a block of tokens, made as bytes by numpy.

A line is constant text with five kinds of fields between: fits, motif numbers, novelty flags and
the token index. Each field is written into a byte matrix (one row a token, its digits
right-aligned) with a mask of the bytes it keeps; the pieces are joined side by side and the kept
bytes read out in row order, which is the block's lines end to end. Per token this costs no Python
at all: writing the lines one f-string at a time was a third of derive's time on a run with
structure (500,000 tokens: 3 s of about 10).

The bytes are those of ``dumps_ndjson_line`` (sorted keys, default separators, ``repr`` floats):
a fit as written is a float nearest to ``k / 10**6`` for an integer ``k`` (``derive._fit_values``),
whose ``repr`` is the decimal ``k / 10**6`` without trailing zeros. That holds where ``repr``
writes a point rather than an exponent, so a block with a fit in ``(-1e-4, 1e-4)`` (a threshold at
or below it), a fit beyond ``[-1, 1]`` or not finite, or a negative token index returns None: its
lines are written one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ZERO = ord("0")
_POWERS = 10 ** np.arange(19, dtype=np.int64)  # int64 holds 19 digits
#: the three digits of 0..999, and how many of them are trailing zeros
_DIGITS3 = np.array([[ord(c) for c in f"{n:03d}"] for n in range(1000)], dtype=np.uint8)
_TRAILING3 = np.array([3 if n == 0 else len(f"{n:03d}") - len(f"{n:03d}".rstrip("0")) for n in range(1000)])
_BOOLS = np.frombuffer(b"true} false}", dtype=np.uint8).reshape(2, 6)
_BOOL_KEEP = np.array([[True] * 5 + [False], [True] * 6])
FIT_WIDTH, BOOL_WIDTH = 9, 6


def _digits(values: np.ndarray, least: int) -> tuple[np.ndarray, np.ndarray]:
    """``[..., w]`` ASCII digits of non-negative integers, right-aligned and zero-padded to
    ``least``, with the mask of the digits written (``f"{n:0{least}d}"``)."""
    top = int(values.max(initial=0))
    if least == 3 and top < 1000:
        return _DIGITS3[values], np.ones((*values.shape, 3), dtype=bool)
    width = max(least, len(str(top)))
    digits = values[..., None] // _POWERS[width - 1 :: -1] % 10
    keep = np.logical_or.accumulate(digits != 0, axis=-1)
    keep[..., width - least :] = True
    return (digits + ZERO).astype(np.uint8), keep


def _fit_digits(micros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[..., 9]`` bytes of fits given in millionths (``|k| <= 10**6``): sign, unit, point and six
    decimals, trailing zeros dropped (one decimal kept)."""
    size = np.abs(micros)
    out = np.empty((*micros.shape, FIT_WIDTH), dtype=np.uint8)
    out[..., 0] = ord("-")
    out[..., 1] = size // 1_000_000 + ZERO
    out[..., 2] = ord(".")
    high, low = np.divmod(size % 1_000_000, 1000)
    out[..., 3:6] = _DIGITS3[high]
    out[..., 6:9] = _DIGITS3[low]
    trailing = np.where(low == 0, 3 + _TRAILING3[high], _TRAILING3[low])
    keep = np.empty(out.shape, dtype=bool)
    keep[..., 0] = micros < 0
    keep[..., 1:4] = True
    keep[..., 4:] = np.arange(1, 6) < (6 - trailing)[..., None]
    return out, keep


class LineMaker:
    """Lines of one run's blocks: ``head`` and ``tail`` are the constant text before the global
    motif and before the token index; ``layers`` the layer indices in their order. The constant
    bytes of a block's matrix are laid out once per shape and kept; each block overwrites only
    its fields' columns."""

    def __init__(self, head: str, tail: str, layers: Sequence[int]) -> None:
        self.head, self.tail, self.layers = head, tail, list(layers)
        self._layouts: dict[tuple[int, int, int], _Layout] = {}

    def lines(
        self,
        tokens: np.ndarray,
        numbers: Sequence[np.ndarray],
        fits: Sequence[np.ndarray],
        novel: Sequence[np.ndarray],
    ) -> bytes | None:
        """The lines of a block: ``numbers``, ``fits`` (as written) and ``novel`` per clustering,
        the global one first, then each layer's; None where the block must be written line by
        line (see the module's docstring)."""
        rows = tokens.size
        if rows == 0:
            return b""
        scaled = np.rint(np.stack(fits, axis=1) * 1e6)
        if not np.isfinite(scaled).all() or tokens.min() < 0:
            return None
        micros = scaled.astype(np.int64)
        size = np.abs(micros)
        if size.min() < 100 or size.max() > 1_000_000:
            return None
        fit_bytes, fit_keep = _fit_digits(micros)
        number_bytes, number_keep = _digits(np.stack(numbers, axis=1).astype(np.int64), 3)
        flags = 1 - np.stack(novel, axis=1).astype(np.intp)
        token_bytes, token_keep = _digits(tokens.astype(np.int64), 1)
        shape = (rows, number_bytes.shape[-1], token_bytes.shape[-1])
        layout = self._layouts.get(shape)
        if layout is None:
            layout = self._layouts[shape] = self._layout(*shape)
        text, keep = layout.text, layout.keep
        for columns, values, kept in (
            (layout.fits, fit_bytes, fit_keep),
            (layout.numbers, number_bytes, number_keep),
            (layout.bools, _BOOLS[flags], _BOOL_KEEP[flags]),
            (layout.token, token_bytes, token_keep),
        ):
            text[:, columns] = values
            keep[:, columns] = kept
        made: bytes = text[keep].tobytes()
        return made

    def _layout(self, rows: int, number_width: int, token_width: int) -> _Layout:
        pieces: list[bytes | tuple[str, int]] = []

        def motif(column: int, before: str, middle: str) -> None:
            pieces.extend(
                [
                    before.encode(),
                    ("fit", column),
                    middle.encode(),
                    ("number", column),
                    b'", "novel": ',
                    ("bool", column),
                ]
            )

        motif(0, self.head + '{"fit": ', ', "motif_id": "g_')
        for column, index in enumerate(self.layers, 1):
            before = ', "layer_motifs": [{"fit": ' if column == 1 else ', {"fit": '
            motif(column, before, f', "layer_index": {index}, "motif_id": "l{index:02d}_')
        closing = "]}" if self.layers else ', "layer_motifs": []}'
        pieces.extend([(closing + self.tail).encode(), ("token", 0), b"}\n"])
        widths = {"fit": FIT_WIDTH, "number": number_width, "bool": BOOL_WIDTH, "token": token_width}
        constant = bytearray()
        places: dict[str, list[np.ndarray]] = {kind: [] for kind in widths}
        for piece in pieces:
            if isinstance(piece, bytes):
                constant += piece
            else:
                kind, _ = piece
                places[kind].append(len(constant) + np.arange(widths[kind]))
                constant += b"\0" * widths[kind]
        row = np.frombuffer(bytes(constant), dtype=np.uint8)
        return _Layout(
            np.tile(row, (rows, 1)),
            np.ones((rows, row.size), dtype=bool),
            np.stack(places["fit"]),
            np.stack(places["number"]),
            np.stack(places["bool"]),
            places["token"][0],
        )


@dataclass(slots=True)
class _Layout:
    """A block's byte matrix with its constant text in place, its mask, and the columns of each
    field (``[clusterings, width]``; the token's ``[width]``)."""

    text: np.ndarray
    keep: np.ndarray
    fits: np.ndarray
    numbers: np.ndarray
    bools: np.ndarray
    token: np.ndarray
