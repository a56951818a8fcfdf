"""Small statistics used to tell routing structure from chance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mutual_information(x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray) -> float:
    """Plug-in mutual information I(X; Y) in bits of paired discrete observations.

    Biased upward on small samples; compare with the same estimate on shuffled pairs.
    """
    a, b = np.asarray(x), np.asarray(y)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("x and y must be 1-D and of the same length")
    if a.size == 0:
        return 0.0
    _, xi = np.unique(a, return_inverse=True)
    _, yi = np.unique(b, return_inverse=True)
    joint = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(joint, (xi, yi), 1.0)
    joint /= a.size
    px, py = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum())


def shuffled_mutual_information(
    x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray, rounds: int = 20, seed: int = 0
) -> float:
    """Mean I(X; Y) after shuffling Y across observations: the chance level for this sample."""
    rng = np.random.default_rng(seed)
    values = np.asarray(y)
    return float(np.mean([mutual_information(x, rng.permutation(values)) for _ in range(rounds)]))
