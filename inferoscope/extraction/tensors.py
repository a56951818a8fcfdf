"""Turn tensor-likes (torch tensors, numpy arrays, lists) into plain float lists, no torch import."""

from __future__ import annotations

from typing import Any


def to_float_list(values: Any) -> list[float]:
    """A 1-D list of floats from a tensor-like; a single leading row (``[1, E]``) is unwrapped."""
    if hasattr(values, "detach"):
        values = values.detach()
    if hasattr(values, "cpu"):
        values = values.cpu()
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (list, tuple)) and len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = values[0]
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"router logits must be a 1-D sequence of numbers, got {type(values).__name__}")
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"router logits must be numbers, got {type(value).__name__}")
        out.append(float(value))
    return out
