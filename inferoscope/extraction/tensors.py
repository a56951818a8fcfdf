"""Turn tensor-likes (torch tensors, numpy arrays, lists) into plain float lists, no torch import."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


class LogitsShapeError(TypeError, ValueError):
    """Router logits that are not one flat row of numbers.

    Both a TypeError (the contract's word for a wrong kind of input) and a ValueError (what
    the original library raised for a tensor of the wrong rank), so code catching either works.
    """


def to_float_list(values: Any) -> list[float]:
    """A 1-D list of floats from a tensor-like, a numpy array or a sequence of real numbers.

    A 2-D tensor (``[1, E]`` included) is refused, never unwrapped: which row was meant is
    the caller's decision. Numpy scalars count as numbers; bools and strings do not.
    """
    if hasattr(values, "detach"):
        values = values.detach()
    if hasattr(values, "cpu"):
        values = values.cpu()
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, Sequence):
        raise TypeError(
            f"router_logits must be a 1D sequence (or a tensor-like with tolist()) of numeric values, "
            f"got {type(values).__name__}"
        )
    out: list[float] = []
    for position, value in enumerate(values):
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
            raise LogitsShapeError(
                f"router_logits must be a 1D sequence of numeric values; item {position} is itself a "
                "sequence (a 2-D tensor is never unwrapped: pass the row you mean)"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"router_logits must contain only numeric values; item {position} is {type(value).__name__}"
            )
        out.append(float(value))
    return out
