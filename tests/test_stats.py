"""Mutual information: exact on known cases, near zero when shuffled."""

from __future__ import annotations

import numpy as np
import pytest

from inferoscope.stats import mutual_information, shuffled_mutual_information


def test_identical_variables_share_their_entropy() -> None:
    x = np.repeat(np.arange(4), 25)
    assert mutual_information(x, x) == pytest.approx(2.0)


def test_independent_variables_share_nothing() -> None:
    x, y = np.meshgrid(np.arange(4), np.arange(8))
    assert mutual_information(x.ravel(), y.ravel()) == pytest.approx(0.0, abs=1e-12)


def test_shuffling_destroys_a_dependence() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 8, size=5000)
    assert mutual_information(x, x % 4) == pytest.approx(2.0, abs=0.01)
    assert shuffled_mutual_information(x, x % 4) < 0.01


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError):
        mutual_information([1, 2], [1])
