"""Scrambled null models: valid bundles that keep the marginals and lose the structure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from inferoscope import RunReader, load_run_bundle
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.scramble import scramble_bundle
from inferoscope.stats import mutual_information


def _layer_vectors(bundle: dict, layer_index: int) -> Counter:
    return Counter(
        tuple(la["router_probs"])
        for e in bundle["raw_events"]
        for la in e["layers"]
        if la["layer_index"] == layer_index
    )


def test_token_scramble_keeps_each_layers_vectors_and_labels_itself(tmp_path: Path) -> None:
    run = scramble_bundle(EXAMPLE_RUN, tmp_path, "tokens", seed=1)
    assert RunReader(run).validate().ok and "SCRAMBLED" in run.name
    real, fake = load_run_bundle(EXAMPLE_RUN), load_run_bundle(run)
    for layer in range(4):
        assert _layer_vectors(real, layer) == _layer_vectors(fake, layer)
    assert [e["token_text"] for e in real["raw_events"]] == [e["token_text"] for e in fake["raw_events"]]
    assert fake["manifest"]["capture_config"]["scrambled"]["source_run_id"] == "demo-run"
    assert real["raw_events"][5]["layers"] != fake["raw_events"][5]["layers"]


def test_expert_scramble_keeps_every_distributions_shape(tmp_path: Path) -> None:
    run = scramble_bundle(EXAMPLE_RUN, tmp_path, "experts", seed=2)
    assert RunReader(run).validate().ok
    real, fake = load_run_bundle(EXAMPLE_RUN)["raw_events"], load_run_bundle(run)["raw_events"]
    for a, b in zip(real, fake, strict=True):
        for la, lb in zip(a["layers"], b["layers"], strict=True):
            assert sorted(la["router_probs"]) == sorted(lb["router_probs"])
            assert la["topk_probs"] == lb["topk_probs"] and la["entropy"] == lb["entropy"]


def test_scrambles_are_deterministic_per_seed(tmp_path: Path) -> None:
    one = scramble_bundle(EXAMPLE_RUN, tmp_path / "a", "tokens", seed=5)
    two = scramble_bundle(EXAMPLE_RUN, tmp_path / "b", "tokens", seed=5)
    other = scramble_bundle(EXAMPLE_RUN, tmp_path / "c", "tokens", seed=6)
    raw = lambda p: (p / "raw_trace.ndjson").read_bytes()  # noqa: E731
    assert raw(one) == raw(two) and raw(one) != raw(other)


def test_token_scramble_destroys_token_to_expert_information(tmp_path: Path) -> None:
    def top1_mi(bundle: dict) -> float:
        events = bundle["raw_events"]
        inputs = [e["token_id"] for e in events[:-1]]
        return float(
            np.mean(
                [
                    mutual_information(inputs, [e["layers"][layer]["topk_indices"][0] for e in events[1:]])
                    for layer in range(4)
                ]
            )
        )

    real = top1_mi(load_run_bundle(EXAMPLE_RUN))
    fake = np.mean(
        [
            top1_mi(load_run_bundle(scramble_bundle(EXAMPLE_RUN, tmp_path / str(s), "tokens", seed=s)))
            for s in range(5)
        ]
    )
    assert real > fake + 0.3


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant"):
        scramble_bundle(EXAMPLE_RUN, tmp_path, "layers")


@pytest.mark.parametrize("variant", ["tokens", "experts"])
def test_the_streamed_twin_equals_the_in_memory_scramble(tmp_path: Path, variant: str) -> None:
    from inferoscope.scramble import scrambled_events

    run = scramble_bundle(EXAMPLE_RUN, tmp_path, variant, seed=3)
    real = load_run_bundle(EXAMPLE_RUN)["raw_events"]
    expected = scrambled_events(real, variant, 3)
    got = load_run_bundle(run)["raw_events"]
    assert [e["layers"] for e in got] == [e["layers"] for e in expected]
    assert [e["token_text"] for e in got] == [e["token_text"] for e in real]
